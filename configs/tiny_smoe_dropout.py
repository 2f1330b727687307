"""Tiny SMoE-Dropout on the embedded Shakespeare corpus (docs/methods/smoe_dropout.md; Chen et al., "Sparse MoE as the New
Dropout: Scaling Dense and Self-Slimmable Transformers", ICLR 2023, arXiv 2303.01610).

Same decoder and data as tiny_moe.py (4 layers, d_model 128, d_ff 512), but every block's dense MLP is split
evenly into E = 16 experts of width d_ff / E = 32 (so the experts of a layer together hold exactly the dense MLP's
hidden units), with a frozen, randomly initialised router with bias (--freeze_gate) and the softmax taken over
the selected logits only (CustomNaiveGate: gate 'topk_softmax'). No load-balancing or z-loss, no capacity
dropping (capacity_formula 'none'). The number of experts per token grows linearly from k = E/2 = 8 to
k = E = 16 over training (the paper's Table-1 schedule); evaluation uses all 16 experts unless moe.eval_top_k is
set. A standard MoE: one fixed pool entry per layer. docs/methods/smoe_dropout.md.

Argument: '' (frozen random router, the method) or 'learned' (the learned-router SMoE baseline: the same model
with a trainable router, CustomNaiveGate unfrozen).

Run:  python -m samoe_jax.describe --config=configs/tiny_smoe_dropout.py
      python -m samoe_jax.train --config=configs/tiny_smoe_dropout.py --workdir=runs/tiny_smoe_dropout
      python -m samoe_jax.analysis.slimmability --workdir=runs/tiny_smoe_dropout
      python -m samoe_jax.evaluate --workdir=runs/tiny_smoe_dropout --config=configs/tiny_smoe_dropout.py \
          --config.moe.eval_top_k=4 --tasks= --validation_batches=all
"""

from samoe_jax.config.presets import set_sharing, tiny

NUM_EXPERTS = 16


def get_config(variant: str = ''):
  if variant not in ('', 'learned'):
    raise ValueError(f"configs/tiny_smoe_dropout.py: argument {variant!r} must be '' or 'learned'")
  c = tiny('moe')
  c.model.layer_plan = 'all'                          # --moe_index 0,1,2,3: every block is an MoE block
  c.moe.num_experts = NUM_EXPERTS
  c.moe.expert_d_ff = c.model.d_ff // NUM_EXPERTS     # the dense MLP split evenly: E experts of d_ff / E
  c.moe.top_k = NUM_EXPERTS                           # k_max: the layers' static maximum
  c.moe.gate = 'topk_softmax'                         # softmax over the selected logits (CustomNaiveGate)
  c.moe.router_bias = True                            # nn.Linear(d, E) with bias
  c.moe.router_trainable = variant == 'learned'       # --freeze_gate (the method) or a learned router (baseline)
  c.moe.lb_loss_coef = 0.0                            # no balance loss (CustomNaiveGate has none)
  c.moe.z_loss_coef = 0.0
  c.moe.capacity_formula = 'none'                     # every choice is computed: no dropping
  c.moe.smoe_dropout.kind = 'linear_increase'         # k: E/2 -> E linearly over training
  c.moe.smoe_dropout.k_min = NUM_EXPERTS // 2
  c.moe.smoe_dropout.k_max = 0                        # = moe.top_k
  c.moe.smoe_dropout.steps = 0                        # = train.steps
  set_sharing(c, 'moe', num_moe_layers=c.model.num_layers)   # standard MoE: one fixed pool entry per layer
  return c
