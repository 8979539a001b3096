"""Statistics and reports of the experiments in ``tools/experiments``: not part of the product.

The ``vla_rl_ros`` package trains, evaluates and deploys; this package only reads what its
commands wrote (result records, scaling curves) and says what they show: intervals, tests,
sizing, tables and plots. Nothing in ``vla_rl_ros`` imports it, and it may change with the
experiments. The scripts beside it put this folder on ``sys.path`` and import ``analysis``.

- :mod:`analysis.stats`: Fisher's exact test, Student-t intervals, sample sizes (scipy.stats).
- :mod:`analysis.headline`: the headline experiment's arms, summary table, plot and claims.
- :mod:`analysis.scaling_pool`: one inference-scaling curve from curves of disjoint seeds.
"""
