"""Analyses of trained runs (python -m samoe_jax.analysis.<name>): slimmability (SMoE-Dropout, methods.md §6),
routing_fluctuation (top-1 expert changes between checkpoints, methods.md §10.2)."""
