"""Data layer: embedded corpus, tokenizer, seqio tasks and the batch pipeline (see docs/data.md).

Import submodules directly (`from samoe_jax.data import pipeline`); this package imports nothing, and
`pipeline` loads TensorFlow and seqio only when a pipeline is built.
"""
