"""Which kernel computes causal self-attention, softmax(Q K^T / sqrt(K)) V (config key model.attention).

Einsum letters: B batch, L length, H heads, K head width.

'einsum'  the scores [B, H, L, L] are materialized (float32 softmax) by two batched matmuls: any backend, and the
          path that KV-cache decoding and Attention-Aware routing always take (they need the cache or the
          probabilities). Activation memory grows with L^2: at GPT-3 350M's shape (16 heads, L = 2048, 8
          sequences) the saved probabilities alone take about 1 GB per layer in bfloat16.
'cudnn'   jax.nn.dot_product_attention(implementation='cudnn'): cuDNN's fused flash attention (Dao et al. 2022,
          "FlashAttention") on NVIDIA GPUs; the scores are never stored. Needs model.dtype='bfloat16',
          a head width that is a multiple of 8 and at most 128, and no attention-probability dropout.
'auto'    (default) 'cudnn' where all of that holds on a GPU backend, else 'einsum'.

TPU runs take 'einsum' (XLA fuses it well there; a Pallas splash-attention kernel is not wired in).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from samoe_jax.config.checks import Problems, is_int, register

ATTENTION_KERNELS = ('auto', 'einsum', 'cudnn')
FUSED_DTYPES = ('bfloat16',)   # of the model dtypes (float32, bfloat16), the ones cuDNN's kernel takes
MAX_FUSED_HEAD_WIDTH = 128   # cuDNN's limit before Hopper (256 from Hopper on); 128 holds on every NVIDIA GPU


def cudnn_problems(dtype: str, dropout_rate: float, head_width: int) -> list[str]:
  """Why cuDNN flash attention cannot run this model ([] when it can, backend aside)."""
  problems = []
  if dtype not in FUSED_DTYPES:
    problems.append(f'model.dtype={dtype!r} (needs one of {FUSED_DTYPES})')
  if dropout_rate:
    problems.append(f'model.dropout_rate={dropout_rate} (attention-probability dropout needs the probabilities)')
  if head_width % 8 or head_width > MAX_FUSED_HEAD_WIDTH:
    problems.append(f'head width model.d_model / model.num_heads = {head_width} (needs a multiple of 8, '
                    f'<= {MAX_FUSED_HEAD_WIDTH})')
  return problems


def _attention_problems(setting: str, dtype: str, dropout_rate: float, head_width: int) -> list[str]:
  """Why model.attention cannot run this model, one line each, backend aside."""
  if setting not in ATTENTION_KERNELS:
    return [f'model.attention={setting!r}: must be one of {ATTENTION_KERNELS}']
  if setting != 'cudnn':
    return []
  return [f"model.attention='cudnn' cannot run with {p}; use 'auto' (cuDNN where it can run, einsums elsewhere) "
          "or 'einsum'" for p in cudnn_problems(dtype, dropout_rate, head_width)]


@register('model')
def check_attention(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """model.attention (a registered check, config/checks.py); the backend is checked when the model is traced
  (resolve_kernel), since a config may be checked on another machine than the one it runs on."""
  m = c.model
  if is_int(m.d_model) and is_int(m.num_heads) and m.num_heads >= 1:
    for problem in _attention_problems(m.attention, m.dtype, m.dropout_rate, m.d_model // m.num_heads):
      problems.line(problem)


def resolve_kernel(setting: str, dtype: str, dropout_rate: float, head_width: int,
                   backend: str | None = None) -> str:
  """model.attention resolved for this backend (default: jax.default_backend()): 'einsum' or 'cudnn'."""
  backend = backend or jax.default_backend()
  problems = _attention_problems(setting, dtype, dropout_rate, head_width)
  if problems:
    raise ValueError('; '.join(problems))
  if setting == 'einsum':
    return 'einsum'
  usable = backend in ('gpu', 'cuda') and not cudnn_problems(dtype, dropout_rate, head_width)
  if setting == 'cudnn' and not usable:
    raise ValueError(f"model.attention='cudnn' needs an NVIDIA GPU backend, this process has {backend!r}: use "
                     "'auto' (cuDNN on a GPU, einsums elsewhere) or 'einsum'")
  return 'cudnn' if usable else 'einsum'


def fused_causal_attention(q_BLHK: jax.Array, k_BLHK: jax.Array, v_BLHK: jax.Array,
                           implementation: str) -> jax.Array:
  """softmax(q k^T / sqrt(K) + causal mask) v through jax.nn.dot_product_attention: [B, L, H, K] -> [B, L, H, K].
  implementation: 'cudnn' (flash attention), or 'xla' (jax's reference of the same call: what the tests compare
  with the einsum path on CPU)."""
  out = jax.nn.dot_product_attention(q_BLHK, k_BLHK, v_BLHK, is_causal=True, implementation=implementation)
  return out.astype(jnp.result_type(q_BLHK))
