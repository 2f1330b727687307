"""Tiny Mixture-of-Students (MoS, DeepSpeed-MoE, docs/methods/distillation.md): a reduced-depth MoE student with staged KD.

The teacher is the tiny 4-layer standard MoE (configs/tiny_moe.py: MoE blocks 1 and 3). The student is the same
model with 3 layers (12.5 % -> 25 % depth reduction at this size; the paper's 350M/1.3B PR-MoE go 24 -> 21 layers):
blocks 0, 2 dense and block 1 MoE (8 experts top-2, its own pool entry). Its blocks 0..2, embeddings, final norm
and block 1's router and experts are initialised from the teacher's bottom layers (init.mode='bottom_layers'; in
the paper's 24 -> 21 mapping, student block i <- teacher block i for i < 21, i.e. the top 3 teacher blocks are
dropped, with their MoE layer(s)). Training: CE + alpha * T^2 * KL(teacher || student) with alpha = 1, T = 1
(Eq. 1) for the first half of the run (distill.stop_step = train.steps / 2: staged KD, the paper's 400K of its
run), then CE only.

Both teacher paths come from the command line (the config cannot know where the teacher was trained):
Run:  python -m samoe_jax.train --config=configs/tiny_moe.py --workdir=runs/tiny_moe
      python -m samoe_jax.describe --config=configs/tiny_mos_student.py
      python -m samoe_jax.train --config=configs/tiny_mos_student.py --workdir=runs/tiny_mos_student \
          --config.distill.teacher_workdir=runs/tiny_moe --config.init.from_workdir=runs/tiny_moe
(leave out --config.init.from_workdir to train the student from a random initialisation with KD only.)
"""

from samoe_jax.config.presets import set_sharing, tiny


def get_config():
  c = tiny('moe')
  c.model.num_layers = 3                  # teacher: 4; 'every_other' keeps MoE block 1 only
  set_sharing(c, 'moe', num_moe_layers=1)  # standard MoE: one fixed pool entry per MoE layer
  c.distill.alpha, c.distill.temperature = 1.0, 1.0
  c.distill.stop_step = c.train.steps // 2
  c.init.mode = 'bottom_layers'
  return c
