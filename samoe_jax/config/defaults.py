"""The one base config every experiment starts from (ml-collections).

Config files in `configs/` call `get_base_config()` and override fields; the command line overrides any key with
`--config.section.key=value`. `samoe_jax.config.validate.validate_config` checks the result before anything is
built and names the bad value in its error.

Sections:
  model   GPT-3-style decoder (sizes, layer plan, dropout, dtype).
  moe     the MoE FFN: experts, top-k, capacity, auxiliary-loss coefficients, dispatch implementation.
  pool    SaMoE's global expert pool: size P, mixing (learned / fixed), granularity, space, temperature, init.
  data    seqio task, vocabulary, sequence length, batch size, shuffling.
  train   steps, optimizer (AdamW, warm-up + cosine), logging, evaluation and checkpoint periods.
  eval    zero/few-shot tasks the trainer scores periodically (python -m samoe_jax.evaluate does it afterwards).
  mesh    device mesh sizes over the ('data', 'expert', 'model') axes; -1 fills with the devices left.
"""

from __future__ import annotations

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the default (tiny SaMoE on the embedded Shakespeare corpus) config."""
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 8192          # embedding rows; >= the vocabulary's size (padding rows are never targets)
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_ff = 512                 # dense FFN width (and expert width unless moe.expert_d_ff > 0)
  c.model.max_len = 128              # learned position table size; >= data.seq_len
  c.model.dropout_rate = 0.0         # embedding, attention-probability and residual dropout (GPT-3 style)
  c.model.init_std = 0.02
  c.model.dtype = 'float32'          # activation/compute dtype; parameters and router are always float32
  # Which blocks get an MoE FFN: 'every_other' (blocks 1, 3, 5, ...), 'all', 'none' (dense model),
  # 'first_half', 'second_half', or an explicit pattern such as 'DMDM' (one letter per block, D=dense, M=MoE).
  c.model.layer_plan = 'every_other'
  c.model.tie_embeddings = True
  # Activation rematerialisation (samoe_jax/models/remat.py): 'none', 'block' (each block keeps only its inputs and
  # is recomputed in the backward pass: ~1/3 more compute, far less activation memory) or 'dots' (keep matmuls).
  c.model.remat = 'none'

  c.moe = ml_collections.ConfigDict()
  c.moe.num_experts = 8
  c.moe.top_k = 2
  c.moe.capacity_factor_train = 1.25
  c.moe.capacity_factor_eval = 2.0
  c.moe.min_capacity = 4
  c.moe.group_size = 0               # tokens per routing group; 0 = one sequence (causal and cheap)
  c.moe.expert_d_ff = 0              # 0 = model.d_ff
  c.moe.lb_loss_coef = 0.01          # Switch load-balancing loss, summed over MoE layers
  c.moe.z_loss_coef = 0.001          # ST-MoE router z-loss, summed over MoE layers
  c.moe.dispatch = 'gather'          # 'gather' (index gather/scatter; CPU/GPU) or 'einsum' (one-hot; TPU)
  # Expert-buffer slot priority: 'position' (token order; causal, the decoder default) or 'choice' (fairseq:
  # all first choices before second choices; a later token can displace an earlier one: not causal).
  c.moe.slot_priority = 'position'

  c.pool = ml_collections.ConfigDict()
  c.pool.size = 2                    # P: global MoE layers in the pool (P=1: fully tied experts)
  c.pool.mixing = 'learned'          # 'learned' softmax(alpha/tau) or 'fixed' one-hot (standard MoE / manual)
  c.pool.granularity = 'layer'       # 'layer': alpha [P] per MoE layer; 'expert': alpha [E, P]
  c.pool.space = 'weight'            # 'weight': mix weights (cost of one MoE); 'output': mix outputs (ablation)
  c.pool.temperature = 1.0
  c.pool.init = 'uniform'            # 'uniform' (alpha = 0) or 'one_hot' (alpha = one_hot_scale on assigned entry)
  c.pool.one_hot_scale = 3.0
  c.pool.assignment = 'modulo'       # MoE layer l -> pool entry: 'modulo' (l mod P) or 'block' (l*P // L_moe)

  c.data = ml_collections.ConfigDict()
  c.data.task = 'shakespeare'        # a task registered in samoe_jax.data.tasks
  c.data.vocabulary = 'sentencepiece'  # 'sentencepiece' (shipped 8k), 'byte', 'gpt2', or a .model / .tiktoken path
  c.data.seq_len = 128
  c.data.batch_size = 16             # global batch (sequences)
  c.data.shuffle_seed = 0
  c.data.shuffle_buffer = 10_000
  c.data.tfds_name = ''              # for task 'tfds_lm': e.g. 'c4/en:3.1.0'
  c.data.tfds_data_dir = ''          # prepared TFDS directory (local path or gs://); nothing is downloaded
  c.data.text_key = 'text'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'

  c.train = ml_collections.ConfigDict()
  c.train.steps = 600
  c.train.seed = 0
  c.train.learning_rate = 3e-3
  c.train.min_lr_ratio = 0.1         # cosine decays to learning_rate * min_lr_ratio
  c.train.warmup_steps = 50
  c.train.decay_steps = 0            # cosine horizon in steps; 0 = train.steps. Set it to keep the planned schedule
                                     # when a run is resumed or extended with a different train.steps
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  # Gradient accumulation: each step's data.batch_size sequences go through the model in this many slices (one
  # optimizer update, same loss as one pass). data.batch_size must be divisible by microbatches x the data shards
  # (mesh data x expert) x the sequences of one routing group. Use it when a step's activations do not fit.
  c.train.microbatches = 1
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 8
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.async_checkpoint = True

  c.eval = ml_collections.ConfigDict()   # zero/few-shot tasks run by the trainer (docs/evaluation.md)
  c.eval.tasks = ''                  # comma-separated task names, 'deepspeed' or 'all'; '' = none during training
  c.eval.data_dir = ''               # <task>/<split>.jsonl files (docs/evaluation.md); required when tasks are set
  c.eval.every = 0                   # steps between task evaluations; 0 = only after the last step
  c.eval.num_fewshot = 0
  c.eval.fewshot_seeds = '1234'      # '1234,5' or a count such as '5x' (averaged over the shot sets)
  c.eval.limit = 0                   # documents per task (0 = all)
  c.eval.batch_size = 16             # sequences per scoring batch (a multiple of the data shards)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.expert = 1
  c.mesh.model = 1
  return c


def get_config() -> ml_collections.ConfigDict:
  return get_base_config()
