"""Neuron permutation alignment of experts (MC-SMoE step 1, Li et al. 2024; weight matching, Ainsworth et al. 2023).

An expert FFN y = W_out^T gelu(W_in^T x + b_in) + b_out (w_in [D, F], b_in [F], w_out [F, D]) computes the same
function after any permutation pi of its F hidden units applied to w_in's columns, b_in and w_out's rows. To merge
experts unit by unit, each expert is first permuted to match a reference expert (expert 0 of the layer): pi
maximises sum_r M[r, pi(r)] with the weight-matching similarity
    M = w_in_ref^T w_in + w_out_ref w_out^T + b_in_ref b_in^T        [F, F]
solved exactly by the Hungarian algorithm (scipy.optimize.linear_sum_assignment, maximize=True).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from samoe_jax.compress.experts import LayerExpertsNP


def matching_cost(ref: LayerExpertsNP, e_ref: int, other: LayerExpertsNP, e: int) -> np.ndarray:
  """The weight-matching similarity M [F, F] between the hidden units of expert e_ref of `ref` and expert e."""
  return (ref.w_in[e_ref].T @ other.w_in[e] + ref.w_out[e_ref] @ other.w_out[e].T
          + np.outer(ref.b_in[e_ref], other.b_in[e]))


def permutation_to(ref: LayerExpertsNP, e_ref: int, other: LayerExpertsNP, e: int) -> np.ndarray:
  """pi [F]: hidden unit r of the aligned expert is unit pi[r] of expert e (Hungarian assignment on M)."""
  rows, cols = linear_sum_assignment(matching_cost(ref, e_ref, other, e), maximize=True)
  pi = np.empty_like(cols)
  pi[rows] = cols
  return pi


def permute_expert(experts: LayerExpertsNP, e: int, pi: np.ndarray) -> LayerExpertsNP:
  """`experts` with expert e's hidden units reordered by pi (the same function)."""
  out = experts.copy()
  out.w_in[e] = experts.w_in[e][:, pi]
  out.b_in[e] = experts.b_in[e][pi]
  out.w_out[e] = experts.w_out[e][pi, :]
  return out


def align_layer(experts: LayerExpertsNP, reference: int = 0) -> tuple[LayerExpertsNP, np.ndarray]:
  """Every expert of one layer aligned to expert `reference` (MC-SMoE aligns to expert 0): (aligned experts,
  permutations [E, F]; the reference's is the identity)."""
  perms = np.tile(np.arange(experts.w_in.shape[-1]), (experts.num_experts, 1))
  aligned = experts
  for e in range(experts.num_experts):
    if e != reference:
      perms[e] = permutation_to(experts, reference, experts, e)
      aligned = permute_expert(aligned, e, perms[e])
  return aligned, perms
