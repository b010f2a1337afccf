"""`semcal fit`: a filter from a trusted corpus and a stream sample, checked on held-out texts, with its report.

May import semcal.protocol and every layer below it.
"""
