"""Evaluation: zero/few-shot tasks scored exactly as lm-evaluation-harness 0.4.x, perplexity, and the harness bridge."""
