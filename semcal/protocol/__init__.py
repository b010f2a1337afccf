"""The paper's protocol: distort, the evaluation and its measurements, the run and its layout, the demo, explain and animate.

May import semcal.stream and every layer below it.
"""
