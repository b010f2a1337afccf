"""Stage 0: captioning images and audio into texts (the stages, their inputs, the captioners).

May import semcal.lm, semcal.store and semcal.core.
"""
