"""Dense GeLU FFN and LayerNorm of the GPT-3-style block.

Einsum letters: B batch, L length, D model width, F hidden width.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers


class LayerNorm(nn.Module):
  """Pre-LN normalisation with scale and bias, computed in float32: x_BLD -> x_BLD."""
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    d = x_BLD.shape[-1]
    scale = self.param('scale', initializers.ones(('embed',)), (d,))
    bias = self.param('bias', initializers.zeros(('embed',)), (d,))
    x = x_BLD.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


class DenseFFN(nn.Module):
  """y = W_out gelu(W_in x + b_in) + b_out: x_BLD -> y_BLD."""
  d_ff: int
  init_std: float
  out_init_std: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array, *, train: bool) -> jax.Array:
    del train
    d = x_BLD.shape[-1]
    w_in_DF = self.param('w_in', initializers.normal(self.init_std, ('embed', 'mlp')), (d, self.d_ff))
    b_in_F = self.param('b_in', initializers.zeros(('mlp',)), (self.d_ff,))
    w_out_FD = self.param('w_out', initializers.normal(self.out_init_std, ('mlp', 'embed')), (self.d_ff, d))
    b_out_D = self.param('b_out', initializers.zeros(('embed',)), (d,))
    b, l, _ = x_BLD.shape
    # 2-D matmuls over flattened tokens: XLA's backward of the 3-D einsum is ~2x slower on CPU.
    h_TF = x_BLD.reshape(b * l, d).astype(self.dtype) @ w_in_DF.astype(self.dtype)
    h_TF = jax.nn.gelu(h_TF + b_in_F.astype(self.dtype))
    h_BLF = nn.with_logical_constraint(h_TF.reshape(b, l, self.d_ff), ('batch', 'length', 'mlp'))
    y_TD = h_BLF.reshape(b * l, self.d_ff) @ w_out_FD.astype(self.dtype) + b_out_D.astype(self.dtype)
    return y_TD.reshape(b, l, d)
