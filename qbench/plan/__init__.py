"""What will run: matrix files read and checked, expanded into jobs with their identity.

Nothing here trains, evaluates or writes a run directory, and nothing here
imports :mod:`qbench.run` or :mod:`qbench.report`: ``qbench validate`` is this
wing alone.
"""
