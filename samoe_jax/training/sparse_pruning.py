"""Progressive pruning of the sparse residuals S of low-rank plus sparse experts (LoSparse; MC-SMoE's stage "C").

MC-SMoE (Li et al., ICLR 2024) compresses merged experts as W = U V + S (layers/low_rank_experts.py) and prunes S
during distillation fine-tuning as LoSparse (Li et al., ICML 2023) does, with PLATON's importance (Zhang et al.,
ICML 2022):
    I = |S * dL/dS|,  I_bar <- b1 I_bar + (1 - b1) I,  U_bar <- b2 U_bar + (1 - b2) |I - I_bar|,  score = I_bar U_bar
and a cubic schedule of the fraction of S's entries kept (the density), over update t = 1 .. T (T = train.decay_steps,
or train.steps when 0, the learning-rate schedule's horizon):
    t <= t_i:               density 1 (no pruning)
    t_i < t <= T - t_f:     d_f + (1 - d_f) (1 - (t - t_i) / (T - t_f - t_i))^3, pruning every `mask_every` updates
    t > T - t_f:            d_f, pruning every update
with d_f = 1 - low_rank_sparse.sparsity and t_i, t_f the configured fractions of T. Pruning sets the entries whose
score is at most the global k-th smallest (k = floor(N (1 - density)), N = all entries of every S) to exactly zero;
a zero entry then has zero importance, so the support can only shrink unless an entry's score climbs back. The
importance uses the gradients before clipping, at the parameters they were computed at.

The pruner wraps the optimizer (`with_pruning`): its state (update count, I_bar, U_bar) lives in the optimizer
state, so it is checkpointed and a resumed run prunes exactly as the uninterrupted one. Non-sparse parameters get
scalar placeholders in I_bar / U_bar (no memory).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from samoe_jax.config.checks import Problems, register
from samoe_jax.config.sections import LowRankSparseSection
from samoe_jax.layers.low_rank_experts import sparse_names

SECTION = 'low_rank_sparse'


LowRankSparse = LowRankSparseSection   # config.low_rank_sparse (config/sections.py); field names are its keys


def config_problems(config: ml_collections.ConfigDict, num_moe: int, d_model: int, expert_d_ff: int) -> list[str]:
  """'key=value: allowed' lines for the low_rank_sparse section (empty when valid or absent)."""
  out = []
  s = LowRankSparse.of(config)
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
  is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
  if not is_int(s.rank) or s.rank < 0:
    out.append(f'{SECTION}.rank={s.rank!r}: must be an integer >= 0 (0 = dense experts)')
  elif s.rank and not num_moe:
    out.append(f'{SECTION}.rank={s.rank!r}: the model has no MoE layers (model.layer_plan is dense); use 0')
  elif s.rank > min(d_model, expert_d_ff):
    out.append(f'{SECTION}.rank={s.rank!r}: must be at most min(model.d_model, expert width) = '
               f'{min(d_model, expert_d_ff)}')
  if not is_num(s.sparsity) or not 0 <= s.sparsity < 1:
    out.append(f'{SECTION}.sparsity={s.sparsity!r}: must lie in [0, 1) (the fraction of S pruned)')
  elif s.sparsity and not s.rank:
    out.append(f'{SECTION}.sparsity={s.sparsity!r}: needs {SECTION}.rank >= 1 (only the residual S of low-rank '
               'experts is pruned)')
  fractions = {'initial_warmup': ' (a fraction of the schedule)', 'final_warmup': ' (a fraction of the schedule)',
               'beta1': '', 'beta2': ''}
  for key, what in fractions.items():
    value = getattr(s, key)
    if not is_num(value) or not 0 <= value < 1:
      out.append(f'{SECTION}.{key}={value!r}: must lie in [0, 1){what}')
  if is_num(s.initial_warmup) and is_num(s.final_warmup) and s.initial_warmup + s.final_warmup >= 1:
    out.append(f'{SECTION}.initial_warmup + final_warmup = {s.initial_warmup + s.final_warmup!r}: must be < 1 '
               '(the cubic pruning phase needs at least one update)')
  if not is_int(s.mask_every) or s.mask_every < 1:
    out.append(f'{SECTION}.mask_every={s.mask_every!r}: must be an integer >= 1')
  return out


@register('low_rank_sparse')
def check_low_rank_sparse(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """The low_rank_sparse section (a registered check, config/checks.py)."""
  for line in config_problems(c, problems.num_moe, c.model.d_model, c.moe.expert_d_ff or c.model.d_ff):
    problems.line(line)


@dataclasses.dataclass(frozen=True)
class PruningSchedule:
  """The cubic density schedule of the module doc over `total_steps` updates."""
  sparsity: float
  total_steps: int
  initial_warmup: float
  final_warmup: float
  mask_every: int

  @property
  def start(self) -> int:
    """t_i: the last update without pruning."""
    return math.floor(self.initial_warmup * self.total_steps)

  @property
  def end(self) -> int:
    """T - t_f: the update at which the final density is reached."""
    return max(self.total_steps - math.floor(self.final_warmup * self.total_steps), self.start + 1)

  def density(self, t: jax.Array | int) -> jax.Array:
    """Fraction of S's entries kept after update t (1-based), float32 []."""
    t = jnp.asarray(t, jnp.float32)
    final = 1.0 - self.sparsity
    progress = jnp.clip((t - self.start) / (self.end - self.start), 0.0, 1.0)
    return jnp.where(t <= self.start, 1.0, final + (1.0 - final) * (1.0 - progress) ** 3).astype(jnp.float32)

  def prunes_at(self, t: jax.Array | int) -> jax.Array:
    """Whether update t (1-based) prunes: every mask_every-th update of the cubic phase, its last update, and every
    update after it. bool []."""
    t = jnp.asarray(t, jnp.int32)
    cubic = (t > self.start) & (t <= self.end) & ((t % self.mask_every == 0) | (t == self.end))
    return cubic | (t > self.end)


class PruningState(NamedTuple):
  """count: updates applied; inner: the wrapped optimizer's state; importance / uncertainty: I_bar / U_bar, one per
  parameter (a scalar 0 for parameters that are not an S)."""
  count: jax.Array
  inner: Any
  importance: Any
  uncertainty: Any


def is_sparse_path(path: tuple[Any, ...]) -> bool:
  """Whether a parameter's tree path names a sparse residual S (layers/low_rank_experts.py)."""
  last = path[-1] if path else None
  return getattr(last, 'key', getattr(last, 'name', None)) in sparse_names()


def _placeholders(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros(p.shape, jnp.float32) if is_sparse_path(path) else jnp.zeros((), jnp.float32),
      params)


def prune_to_density(params: list[jax.Array], updated: list[jax.Array], scores: list[jax.Array],
                     density: jax.Array) -> list[jax.Array]:
  """The updated S arrays with every entry whose score is <= the global k-th smallest score set to zero,
  k = floor(N (1 - density)) over all N entries (none when k = 0). Returns the updates (new - old)."""
  flat = jnp.concatenate([s.reshape(-1) for s in scores])
  k = jnp.floor(flat.shape[0] * (1.0 - density)).astype(jnp.int32)
  kth = jnp.sort(flat)[jnp.maximum(k - 1, 0)]
  return [jnp.where((k == 0) | (s > kth), u, 0.0).astype(u.dtype) - p for p, u, s in zip(params, updated, scores)]


def pruning(inner: optax.GradientTransformation, schedule: PruningSchedule, beta1: float,
            beta2: float) -> optax.GradientTransformation:
  """`inner` (the optimizer) followed by LoSparse pruning of every S parameter (module doc)."""

  def init(params):
    return PruningState(jnp.zeros((), jnp.int32), inner.init(params), _placeholders(params), _placeholders(params))

  def update(grads, state, params):
    updates, inner_state = inner.update(grads, state.inner, params)
    t = state.count + 1
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    treedef = jax.tree.structure(params)
    p_leaves, g_leaves = [p for _, p in paths], jax.tree.leaves(grads)
    u_leaves, i_leaves, c_leaves = (jax.tree.leaves(x) for x in (updates, state.importance, state.uncertainty))
    sparse = [n for n, (path, _) in enumerate(paths) if is_sparse_path(path)]
    for n in sparse:
      ipt = jnp.abs(p_leaves[n].astype(jnp.float32) * g_leaves[n].astype(jnp.float32))
      i_leaves[n] = beta1 * i_leaves[n] + (1.0 - beta1) * ipt
      c_leaves[n] = beta2 * c_leaves[n] + (1.0 - beta2) * jnp.abs(ipt - i_leaves[n])
    if sparse:
      old = [p_leaves[n] for n in sparse]
      new = [p_leaves[n] + u_leaves[n] for n in sparse]
      scores = [i_leaves[n] * c_leaves[n] for n in sparse]
      pruned = jax.lax.cond(schedule.prunes_at(t),
                            lambda: prune_to_density(old, new, scores, schedule.density(t)),
                            lambda: [u_leaves[n] for n in sparse])
      for n, u in zip(sparse, pruned):
        u_leaves[n] = u
    return (jax.tree.unflatten(treedef, u_leaves),
            PruningState(t, inner_state, jax.tree.unflatten(treedef, i_leaves),
                         jax.tree.unflatten(treedef, c_leaves)))

  return optax.GradientTransformation(init, update)


def with_pruning(optimizer: optax.GradientTransformation,
                 config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer, wrapped by the pruner when low_rank_sparse prunes (rank >= 1, sparsity > 0); else itself."""
  s = LowRankSparse.of(config)
  if not s.prunes:
    return optimizer
  horizon = int(config.train.decay_steps or config.train.steps)   # the learning-rate schedule's horizon
  schedule = PruningSchedule(float(s.sparsity), horizon, float(s.initial_warmup),
                             float(s.final_warmup), int(s.mask_every))
  return pruning(optimizer, schedule, float(s.beta1), float(s.beta2))


def sparse_density(params: Any) -> float | None:
  """Measured fraction of nonzero entries over every S of `params` (host or device arrays); None without S."""
  sizes = nonzeros = 0
  for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
    if is_sparse_path(path):
      sizes += p.size
      nonzeros += int(jnp.count_nonzero(p))
  return nonzeros / sizes if sizes else None
