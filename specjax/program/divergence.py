"""Where a greedy output leaves autoregressive decoding, and the target's top-2 logit gap there.

Used to tell a greedy divergence at a near-tie (a gap within float rounding, where a T-node forward may
legitimately round the other way) from a real mismatch (DESIGN, invariant 1)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import numerics
from specjax.io import Target
from specjax.models.llama import causal_mask
from specjax.process_cache import CACHE
from specjax.program.core import BUCKET, round_up


def _last_logits_fn(graphdef):
  """The jitted next-token logits of one padded sequence, kept in the process cache per model graph."""
  def f(params, seq, n):
    model = nnx.merge(graphdef, params)
    B, T = seq.shape
    logits = model(seq, jnp.broadcast_to(jnp.arange(T), (B, T)), None, causal_mask(B, T)).logits
    return logits[0, n - 1]
  if graphdef not in CACHE.helpers:
    CACHE.helpers[graphdef] = jax.jit(f)
  return CACHE.helpers[graphdef]


def next_token_gap(target: Target, ids: list[int]) -> float:
  """Top-1 minus top-2 logit of the target's next-token prediction after `ids` (one forward)."""
  n = len(ids)
  seq = np.zeros((1, round_up(n, BUCKET)), np.int32)
  seq[0, :n] = ids
  graphdef, params = nnx.split(target.model)
  with numerics.scope(target.precision):      # as the baseline computed it
    logits = np.asarray(_last_logits_fn(graphdef)(params, jnp.asarray(seq), n))
  top2 = np.sort(logits)[-2:]
  return float(top2[1] - top2[0])


def first_diff(a: list[int], b: list[int]) -> int | None:
  """Index of the first differing token, or None when equal."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def divergence(target: Target, prompt_ids: list[int], base: list[int], got: list[int]) -> dict | None:
  """None when a greedy output `got` equals the autoregressive `base` (token ids after prompt_ids); else
  {"position": first differing index, "gap": the target's top-1 minus top-2 logit there, after
  prompt + base[:position]}. A gap within float rounding is a near-tie; a larger one is a bug."""
  d = first_diff(got, base)
  if d is None:
    return None
  return {"position": d, "gap": next_token_gap(target, list(prompt_ids) + list(base[:d]))}
