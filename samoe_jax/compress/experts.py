"""One MoE layer's experts as host numpy arrays, the form every compression step works on.

w_in [E, D, F], b_in [E, F], w_out [E, F, D], b_out [E, D] (the layout of layers/experts.ExpertWeights, float32).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LayerExpertsNP:
  """E expert FFNs of one MoE layer (numpy)."""
  w_in: np.ndarray
  b_in: np.ndarray
  w_out: np.ndarray
  b_out: np.ndarray

  @classmethod
  def from_weights(cls, weights) -> 'LayerExpertsNP':
    """From an ExpertWeights (or anything with the four arrays) with leading axis E."""
    return cls(*(np.array(getattr(weights, k), np.float32) for k in ('w_in', 'b_in', 'w_out', 'b_out')))

  @property
  def num_experts(self) -> int:
    return self.w_in.shape[0]

  def copy(self) -> 'LayerExpertsNP':
    return LayerExpertsNP(self.w_in.copy(), self.b_in.copy(), self.w_out.copy(), self.b_out.copy())

  def select(self, index) -> 'LayerExpertsNP':
    """Experts `index` (a list of expert indices), in that order."""
    index = np.asarray(index, np.int64)
    return LayerExpertsNP(self.w_in[index], self.b_in[index], self.w_out[index], self.b_out[index])

  @staticmethod
  def stack(parts: list['LayerExpertsNP']) -> 'LayerExpertsNP':
    return LayerExpertsNP(*(np.concatenate([getattr(p, k) for p in parts]) for k in ('w_in', 'b_in', 'w_out',
                                                                                     'b_out')))

  def arrays(self) -> dict[str, np.ndarray]:
    return {'w_in': self.w_in, 'b_in': self.b_in, 'w_out': self.w_out, 'b_out': self.b_out}


def gelu(x: np.ndarray) -> np.ndarray:
  """tanh-approximated GeLU, as jax.nn.gelu(approximate=True) (the experts' activation)."""
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def expert_output(experts: LayerExpertsNP, e: int, x_TD: np.ndarray) -> np.ndarray:
  """Expert e applied to tokens x_TD: y_TD (float64 for reference computations)."""
  x = x_TD.astype(np.float64)
  h = gelu(x @ experts.w_in[e].astype(np.float64) + experts.b_in[e])
  return h @ experts.w_out[e].astype(np.float64) + experts.b_out[e]
