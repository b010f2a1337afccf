"""Tables, summaries, figures and number formats shared by the stages' reports.

May import semcal.filter, semcal.lm, semcal.store and semcal.core.
"""
