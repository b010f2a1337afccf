"""The base every layer may import: settings and the one user error (config), the console, the launcher's ranks, thread pools.

Imports nothing of semcal's.
"""
