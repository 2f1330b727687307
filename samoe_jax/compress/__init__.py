"""Post-training compression of trained MoE runs: routing statistics, UNCURL task-aware expert pruning (Sarkar et
al. 2024) and MC-SMoE merge-then-compress (Li et al., ICLR 2024). See docs/compression.md.

  python -m samoe_jax.compress stats  --workdir=RUN (--task=piqa --eval_data_dir=DIR | --split=validation)
  python -m samoe_jax.compress uncurl --workdir=RUN --task=piqa --eval_data_dir=DIR --factors=2,4 --out=DIR
  python -m samoe_jax.compress mcsmoe --workdir=RUN --task=piqa --eval_data_dir=DIR --groups=2 --out=DIR

Modules: stats (one pass without gradients), align (neuron permutation), grouping (router-logit similarity,
dominant experts, adaptive group counts), merge (frequency-weighted merging / pruning, the router), runs (reading
a run's experts, writing a compressed run), sweep (fine-tune + evaluate + report).
"""
