"""The one base config every experiment starts from (ml-collections).

Config files in `configs/` call `get_base_config()` and override fields; the command line overrides any key with
`--config.section.key=value`. The config checks (config/checks.py: one pass, every problem in one ValueError) check
the result before anything is built and name the bad value in their error.

Sections:
  model   GPT-3-style decoder (sizes, layer plan, dropout, dtype).
  moe     the MoE FFN: experts, top-k, capacity, auxiliary-loss coefficients, dispatch implementation.
  pool    SaMoE's global expert pool: size P, mixing (learned / fixed), granularity, space, temperature, init.
  data    seqio task, vocabulary, sequence length, batch size, shuffling.
  train   steps, optimizer (AdamW, warm-up + cosine), logging, evaluation and checkpoint periods.
  eval    zero/few-shot tasks the trainer scores periodically (python -m samoe_jax.evaluate does it afterwards).
  mesh    device mesh sizes over the ('data', 'expert', 'model') axes; -1 fills with the devices left; fsdp.
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
  # Attention kernel (samoe_jax/layers/attention_kernel.py): 'auto' (cuDNN flash attention on an NVIDIA GPU for a
  # bfloat16 model without dropout, the materialized einsums elsewhere), 'einsum' or 'cudnn'.
  c.model.attention = 'auto'
  # WideNet sharing (docs/methods/sharing.md, samoe_jax/layers/shared.py): one set of attention
  # weights shared by every block (each block keeps its own LayerNorms and its own decoding cache).
  c.model.share_attention = False

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
  c.moe.dispatch = 'gather'          # 'gather' (index gather/scatter; CPU/GPU), 'einsum' (one-hot; TPU) or
                                     # 'ragged' (dropless: ragged_dot, no capacity; no mesh.expert > 1)
  # Expert-buffer slot priority: 'position' (token order; causal, the decoder default) or 'choice' (fairseq:
  # all first choices before second choices; a later token can displace an earlier one: not causal).
  c.moe.slot_priority = 'position'
  # MomentumSMoE / AdamSMoE (docs/methods/momentum.md, samoe_jax/layers/momentum.py; the fields of its
  # MomentumConfig): a state carried across the MoE layers. kind: 'none' (off), 'heavy_ball' (p = mu p + gamma f;
  # x += p) or 'adam' (x += gamma m / sqrt(v + eps)). adam_layers: 'first' (official code: Adam in the first MoE
  # layer, heavy ball after) or 'all' (the paper's formula in every MoE layer). Written before the method subsections as
  # moe.momentum, moe.momentum_mu, moe.momentum_gamma, moe.adam_* (config/aliases.py still reads them).
  c.moe.momentum_smoe = ml_collections.ConfigDict()
  c.moe.momentum_smoe.kind = 'none'
  c.moe.momentum_smoe.mu = 0.7       # heavy-ball coefficient in [0, 1) (official layer default; sweep 0.3-0.9)
  c.moe.momentum_smoe.gamma = 1.0    # step size gamma > 0 (heavy ball and Adam)
  c.moe.momentum_smoe.beta1 = 0.9
  c.moe.momentum_smoe.beta2 = 0.999
  c.moe.momentum_smoe.eps = 1e-8
  c.moe.momentum_smoe.adam_layers = 'first'
  # PR-MoE = Pyramid-MoE + Residual-MoE (DeepSpeed-MoE, docs/methods/pr_moe.md).
  # experts_per_layer: one expert count per MoE layer, comma list with 'NxM' runs ('32x10,64x2' = ten MoE layers of
  # 32 experts, then two of 64); '' = moe.num_experts everywhere. Layers with equal counts share a pool group.
  # residual: 'none', 'sum' (y = MLP(x) + MoE(x), the paper) or 'learned_softmax' (DeepSpeed use_residual:
  # c = softmax(W_c x + b_c), y = c0 MoE(x) + c1 MLP(x)); the dense MLP is expert-shaped, one per MoE layer.
  c.moe.experts_per_layer = ''
  # Merged / pruned experts (MC-SMoE, UNCURL; samoe_jax/config/expert_map.py, docs/compression.md): one map per MoE
  # layer, ';'-separated, each a comma list giving every router output's stored expert ('0,0,1,2;0,1,1,1'); a
  # token routed to output e is computed by stored expert map[e]. '' = identity. python -m samoe_jax.compress sets it.
  c.moe.expert_map = ''
  c.moe.residual = 'none'
  # SMoE-Dropout (docs/methods/smoe_dropout.md; samoe_jax/layers/k_schedule.py): the number of experts
  # per token k changes over training. smoe_dropout.kind: the k schedule, 'constant' (k = top_k, the default),
  # 'linear_increase', 'linear_decrease', 'cosine_increase', 'cosine_decrease', 'exp_increase', 'exp_decrease' from
  # k_min to k_max (k_max = top_k, the layers' static maximum; 0 = top_k) over `steps` (0 = train.steps); written
  # before the method subsections as moe.k_schedule, moe.k_min, moe.k_max, moe.k_schedule_steps (config/aliases.py).
  # eval_top_k: k for evaluation (validation, scoring, decoding; 0 = top_k); eval_gate: the gate for evaluation
  # ('' = moe.gate; 'uniform' with eval_top_k = num_experts: every expert with weight 1/E, the paper's dense mode).
  c.moe.smoe_dropout = ml_collections.ConfigDict()
  c.moe.smoe_dropout.kind = 'constant'
  c.moe.smoe_dropout.k_min = 1
  c.moe.smoe_dropout.k_max = 0
  c.moe.smoe_dropout.steps = 0
  c.moe.eval_top_k = 0
  c.moe.eval_gate = ''
  # Routing policies (docs/methods/routing.md; samoe_jax/layers/routing_strategies.py). The defaults
  # are the standard top-k MoE. routing: 'token_choice', 'expert_choice' (Zhou et al. 2022; NOT causal) or 'hash'
  # (Roller et al. 2021; expert = fixed hash of the token id, k = 1, no router). gate: 'softmax' (p over all E),
  # 'topk_softmax' (softmax over the chosen logits), 'uniform' (1/k). gate_renorm: 'auto' (top-1 raw, top-k
  # renormalised before dropping), 'none', 'before_drop', 'after_drop'. second_policy (training): 'all', 'sampling'
  # (2nd+ choice: argmax of h + Gumbel), 'random' (GShard: keep it when 2 g2 > U). noise (training): 'none',
  # 'jitter' (input * U[1-eps, 1+eps]), 'gumbel' (argmax of h + Gumbel), 'gaussian' (h + N(0, 1/E^2), V-MoE).
  # capacity_formula: 'deepspeed', 'switch', 'fairseq' (k ceil(T/E)), 'none' (C = T). router_bias: Linear router
  # with bias; router_trainable=False: frozen random router (never updated). slot_priority also takes 'bpr' and
  # 'random' (DeepSpeed RTS), both NOT causal.
  c.moe.routing = 'token_choice'
  c.moe.gate = 'softmax'
  c.moe.gate_renorm = 'auto'
  c.moe.second_policy = 'all'
  c.moe.noise = 'none'
  c.moe.noise_eps = 0.01
  c.moe.capacity_formula = 'deepspeed'
  c.moe.router_bias = False
  c.moe.router_trainable = True
  # Similarity- / Attention-Aware (S)MoE (docs/methods/graph_routing.md, Nguyen et al. 2025;
  # samoe_jax/layers/graph_routing.py; the fields of its GraphConfig). graph.kind: 'none', 'similarity'
  # (S_ij = softmax_j(x_i^T M x_j / tau), j <= i) or 'attention' (S = the block's head-averaged attention
  # probabilities); p~ = (1 - lambda) p + lambda S p is used for selection, gates and the balancing loss. lam: lambda;
  # lam_learned: lambda = sigmoid(theta) per MoE layer, starting at lam. temperature: tau (0 = sqrt of the compared
  # width). metric: 'identity' (M = I) or 'learned' (M = W_s W_s^T, W_s [D, dim]; 0 = d_model). Needs
  # moe.group_size 0 or seq_len. Written before the method subsections as moe.graph_routing, moe.graph_lambda,
  # moe.graph_lambda_learned, moe.similarity_* (config/aliases.py still reads them).
  c.moe.graph = ml_collections.ConfigDict()
  c.moe.graph.kind = 'none'
  c.moe.graph.lam = 1.0
  c.moe.graph.lam_learned = False
  c.moe.graph.temperature = 0.0
  c.moe.graph.metric = 'identity'
  c.moe.graph.dim = 0

  c.pool = ml_collections.ConfigDict()
  c.pool.size = 2                    # P: global MoE layers in the pool (P=1: fully tied experts)
  c.pool.mixing = 'learned'          # 'learned' softmax(alpha/tau) or 'fixed' one-hot (standard MoE / manual)
  c.pool.granularity = 'layer'       # 'layer': alpha [P] per MoE layer; 'expert': alpha [E, P]
  c.pool.space = 'weight'            # 'weight': mix weights (cost of one MoE); 'output': mix outputs (ablation)
  c.pool.temperature = 1.0
  c.pool.init = 'uniform'            # 'uniform' (alpha = 0), 'one_hot' (alpha = one_hot_scale on each layer's
  c.pool.one_hot_scale = 3.0         # own entry, pool.assignment) or 'random' (alpha ~ N(0, random_init_std^2))
  c.pool.random_init_std = 1.0
  # The mixing logits' learning rate relative to train.learning_rate's schedule (layers/mixing.py; AdamW moves a
  # logit by about lr per step, so at 1.0 a short run cannot move the mixture far from its init: docs/model.md).
  c.pool.lr_multiplier = 1.0
  c.pool.target_reach = 0.0          # > 0: lr_multiplier chosen so that the logits' reach over the run is this
  c.pool.assignment = 'modulo'       # MoE layer l -> pool entry: 'modulo' (l mod P) or 'block' (l*P // L_moe)
  # WideNet / SaMoE sharing ablations (docs/model.md; samoe_jax/layers/shared.py, docs/methods/sharing.md):
  # share_router: one router W_r [D, E] for every MoE layer (each block's own LayerNorm still makes it route
  # differently per depth). entropy_coef: adds coef * mean_l H(softmax(alpha_l / tau)) to the loss (learned mixing,
  # P >= 2): > 0 pushes each layer towards one pool entry, < 0 towards uniform mixing, 0 = off (costs nothing).
  c.pool.share_router = False
  c.pool.entropy_coef = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.task = 'shakespeare'        # a task registered in samoe_jax.data.tasks
  c.data.vocabulary = 'sentencepiece'  # 'sentencepiece' (shipped 8k), 'byte', 'gpt2', or a .model / .tiktoken path
  c.data.seq_len = 128
  c.data.batch_size = 16             # global batch (sequences)
  c.data.shuffle_seed = 0
  c.data.shuffle_buffer = 10_000
  c.data.tfds_name = ''              # for task 'tfds_lm': e.g. 'c4/en:3.1.0'
  c.data.tfds_data_dir = ''          # prepared TFDS directory (local path or gs://); nothing is downloaded
  c.data.text_key = 'text'           # TFDS text feature; for task 'text_files' the JSONL field holding the text
  # Task 'text_files' (samoe_jax/data/text_files.py, docs/data.md): your own .txt / .jsonl files (or .txt.gz /
  # .jsonl.gz), comma-separated globs. Give train_files (+ validation_files) or files, not both; files is split
  # per document: validation when int.from_bytes(sha256(text)[:8], 'little') / 2**64 < validation_fraction.
  c.data.train_files = ''
  c.data.validation_files = ''       # '' = an empty validation split (then set train.eval_batches = 0)
  c.data.files = ''
  c.data.validation_fraction = 0.01  # in (0, 1); only with data.files
  c.data.txt_documents = 'paragraph'  # a .txt file's documents: 'paragraph' (blank-line separated), 'line', 'file'
  c.data.cache_dir = ''              # tokenized text_files rows saved here as .npy (keyed by a sha256); '' = none
  # Task 'task_finetune' (samoe_jax/evaluation/task_finetune.py, docs/training.md): fine-tune on an evaluation task's
  # training split, each document as the evaluator's prompt + the gold continuation, loss on the continuation only;
  # validation on the task's evaluated split. python -m samoe_jax.finetune sets these.
  c.data.finetune_task = ''          # an evaluation task with a 'train' split, e.g. 'piqa'
  c.data.finetune_data_dir = ''      # its <task>/<split>.jsonl files (docs/evaluation.md)
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
  # Adam's mu and nu storage (training/optimizer.py, docs/fsdp.md): 'float32' or 'bfloat16' (half their memory;
  # each update is computed in float32 and rounded back).
  c.train.moment_dtype = 'float32'
  # Gradient accumulation: each step's data.batch_size sequences go through the model in this many slices (one
  # optimizer update, same loss as one pass). data.batch_size must be divisible by microbatches x the data shards
  # (mesh data x expert) x the sequences of one routing group. Use it when a step's activations do not fit.
  c.train.microbatches = 1
  c.train.log_every = 20
  # Gradient-flow statistics (samoe_jax/training/grad_stats.py, docs/analysis.md): every N steps the train step also
  # returns gradient norms, gradient per parameter and update/weight ratios per block part, per expert, per pool
  # entry and per layer's mixed experts (metrics.jsonl records of kind 'grad_stats'). 0 = off (costs nothing).
  c.train.grad_stats_every = 0
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
  # FSDP / ZeRO-3 (sharding/fsdp.py, docs/fsdp.md): shard every non-expert parameter, its gradient and its Adam
  # moments over ('data', 'expert'); XLA gathers each weight where it is used. Expert weights keep their sharding.
  c.mesh.fsdp = False

  # Knowledge distillation / Mixture-of-Students staged KD (docs/methods/distillation.md, samoe_jax/training/distill.py,
  # docs/methods/distillation.md): loss = CE + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdir = ''     # a trained run's workdir; '' = no distillation
  c.distill.teacher_config = ''      # the teacher's Python config file; '' = TEACHER_WORKDIR/config.json
  c.distill.teacher_step = 0         # teacher checkpoint step; 0 = latest
  c.distill.alpha = 1.0              # KD weight (Megatron-DeepSpeed --kd-beta-ce default 1)
  c.distill.temperature = 1.0        # T (--kd-temp default 1.0); T = 1 gives the paper's CE + alpha * KL
  c.distill.stop_step = 0            # staged KD: KD while step < stop_step, then CE only; 0 = KD for the whole run

  # Initialising a fresh run from another run's checkpoint (samoe_jax/training/init_from.py,
  # docs/methods/upcycling.md); ignored when the workdir already holds a checkpoint (resume).
  c.init = ml_collections.ConfigDict()
  c.init.from_workdir = ''           # source run's workdir; '' = fresh random initialisation
  c.init.step = 0                    # source checkpoint step; 0 = latest
  c.init.mode = 'same'               # 'same' | 'bottom_layers' (reduced-depth student) | 'upcycle' (dense -> MoE)
  c.init.noise_std = 0.0             # upcycle: Gaussian noise added to every expert copy

  # Low-rank plus sparse experts W = U V + S and the progressive pruning of S during fine-tuning (MC-SMoE's
  # compression stage, LoSparse; layers/low_rank_experts.py, training/sparse_pruning.py, docs/compression.md).
  c.low_rank_sparse = ml_collections.ConfigDict()
  c.low_rank_sparse.rank = 0                # R of U V; 0 = dense experts (off)
  c.low_rank_sparse.sparsity = 0.0          # final fraction of S's entries pruned (MC-SMoE: 0.9); 0 = no pruning
  c.low_rank_sparse.initial_warmup = 0.1    # fraction of train.steps before pruning starts
  c.low_rank_sparse.final_warmup = 0.3      # fraction of train.steps at the end held at the final sparsity
  c.low_rank_sparse.beta1 = 0.85            # EMA of the importance |S * dL/dS| (PLATON)
  c.low_rank_sparse.beta2 = 0.95            # EMA of its uncertainty (PLATON)
  c.low_rank_sparse.mask_every = 10         # updates between pruning steps in the cubic phase (LoSparse's deltaT)
  return c


def get_config() -> ml_collections.ConfigDict:
  return get_base_config()
