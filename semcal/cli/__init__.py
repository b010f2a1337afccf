"""The `semcal` command: one entry point that dispatches to the stages.

May import every layer.
"""
