"""Running a plan: the runner, the executors, the worker, weights, training, evaluation.

This wing consumes :mod:`qbench.plan`'s jobs and writes run directories
(:mod:`qbench.results`); :mod:`qbench.report` reads them without importing it.
"""
