"""THE filter object: items, sources, calibrations, the ratio math, decisions, names, the drift reference it keeps.

May import semcal.lm, semcal.store and semcal.core.
"""
