"""Analyses of trained runs (python -m samoe_jax.analysis.<name>; docs/analysis.md): slimmability (SMoE-Dropout),
routing_fluctuation (top-1 expert changes between checkpoints), gradient_flow (the train step's gradient-flow
statistics across runs), speedup (the MoE speedup factor against a dense compute-to-loss frontier)."""
