"""Experiment suites reproducing the SaMoE comparison: `python -m samoe_jax.experiments.reproduce` (suites.py,
runner.py, results.py, figures.py, suite_report.py, paper.py; docs/experiments.md)."""
