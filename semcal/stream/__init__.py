"""Applying a filter to a stream: `semcal filter` (readers, writers, the run, Ray), drift adaptation.

May import semcal.reports, semcal.filter, semcal.captioning.captioning, semcal.lm, semcal.store and semcal.core.
"""
