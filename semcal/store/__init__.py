"""Files and data: atomic writes, records and fingerprints, run-state, data-set loading, label maps, media decoding.

May import semcal.core.
"""
