"""Acceptance rules: which path of a verified draft tree to keep, and the bonus token after it.

All rules return an `Acceptance`: path [B, D+1] node indices from the root (entries past n are
padding), n [B] accepted candidates (0..D), bonus [B] the token that follows the accepted path.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from specjax.protocol import Acceptance, DraftTree

RULES = ("greedy", "sample", "typical")
LOSSLESS = {"greedy": True, "sample": True, "typical": False}


def target_probs(logits, temperature: float, top_k: int | None, top_p: float | None):
  """[..., V] logits -> the target's sampling distribution after temperature, top-k and top-p."""
  x = logits.astype(jnp.float32) / temperature
  if top_k is not None and top_k < x.shape[-1]:
    kth = jax.lax.top_k(x, top_k)[0][..., -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  p = jax.nn.softmax(x, axis=-1)
  if top_p is not None and top_p < 1.0:
    ps = jnp.sort(p, axis=-1)[..., ::-1]
    before = jnp.cumsum(ps, axis=-1) - ps          # mass strictly above each sorted token
    keep_sorted = before < top_p                   # smallest prefix reaching top_p (always keeps the top token)
    thresh = jnp.min(jnp.where(keep_sorted, ps, jnp.inf), axis=-1, keepdims=True)
    p = jnp.where(p >= thresh, p, 0.0)
    p = p / p.sum(-1, keepdims=True)
  return p


def _path_to(tree: DraftTree, node: jax.Array) -> jax.Array:
  """[B] node -> [B, D+1] its ancestors ordered by depth (root first)."""
  anc = jnp.take_along_axis(tree.mask, node[:, None, None], axis=1)[:, 0]          # [B, T]
  d = jnp.arange(tree.max_depth + 1)
  hit = anc[:, None, :] & (tree.depth[:, None, :] == d[None, :, None])           # [B, D+1, T]
  return jnp.argmax(hit, axis=-1).astype(jnp.int32)


def _deepest_valid(tree: DraftTree, match: jax.Array) -> jax.Array:
  """match [B, T]: node agrees with its parent's rule. Returns the deepest node whose whole path matches."""
  match = match.at[:, 0].set(True)
  valid = jnp.all(jnp.where(tree.mask, match[:, None, :], True), axis=-1)
  return jnp.argmax(jnp.where(valid, tree.depth, -1), axis=-1).astype(jnp.int32)


def _parent_values(x: jax.Array, tree: DraftTree) -> jax.Array:
  """x [B, T, ...] -> x at each node's parent (root maps to itself)."""
  idx = jnp.maximum(tree.parent, 0)
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def greedy(logits, tree: DraftTree) -> Acceptance:
  g = jnp.argmax(logits, axis=-1).astype(jnp.int32)                               # [B, T]
  match = (tree.parent >= 0) & (tree.tokens == _parent_values(g, tree))
  best = _deepest_valid(tree, match)
  bonus = jnp.take_along_axis(g, best[:, None], 1)[:, 0]
  return Acceptance(_path_to(tree, best), jnp.take_along_axis(tree.depth, best[:, None], 1)[:, 0], bonus)


def sample(logits, tree: DraftTree, key, *, temperature: float, top_k=None, top_p=None) -> Acceptance:
  """Lossless speculative sampling over a tree (recursive rejection over siblings).

  Deterministic candidates are the case q = one-hot(x): accept with p(x), else zero p(x) and
  renormalise. Sampled candidates with draft distribution q: accept with min(1, p(x)/q(x)), else
  continue from normalise(max(0, p - q)). Children are tried in node order.
  """
  p = target_probs(logits, temperature, top_k, top_p)                            # [B, T, V]
  B, T, V = p.shape
  k_u, k_bonus = jax.random.split(key)
  u = jax.random.uniform(k_u, (B, T))
  rows = jnp.arange(B)

  def step(carry, t):
    cur, resid = carry
    x = tree.tokens[:, t]
    live = tree.parent[:, t] == cur
    px = resid[rows, x]
    if tree.draft_probs is None:
      ratio = px
      rejected = resid.at[rows, x].set(0.0)
    else:
      q = tree.draft_probs[:, t]
      ratio = jnp.minimum(1.0, px / jnp.maximum(q[rows, x], 1e-30))
      rejected = jnp.maximum(resid - q, 0.0)
    rejected = rejected / jnp.maximum(rejected.sum(-1, keepdims=True), 1e-30)
    accept = live & (u[:, t] < ratio)
    resid = jnp.where(accept[:, None], p[:, t], jnp.where(live[:, None], rejected, resid))
    cur = jnp.where(accept, t, cur)
    return (cur, resid), None

  (cur, resid), _ = jax.lax.scan(step, (jnp.zeros(B, jnp.int32), p[:, 0]), jnp.arange(1, T))
  bonus = jax.random.categorical(k_bonus, jnp.log(resid)).astype(jnp.int32)
  return Acceptance(_path_to(tree, cur), jnp.take_along_axis(tree.depth, cur[:, None], 1)[:, 0], bonus)


def typical(logits, tree: DraftTree, key, *, temperature: float, top_k=None, top_p=None,
            eps: float = 0.09, alpha: float = 0.3) -> Acceptance:
  """Medusa-2 typical acceptance: keep x if p(x) > min(eps, alpha * exp(-H(p))). LOSSY: output
  distribution differs from the target's; opt-in only."""
  p = target_probs(logits, max(temperature, 1e-5), top_k, top_p)
  ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0), axis=-1)                 # [B, T]
  thresh = jnp.minimum(eps, alpha * jnp.exp(-ent))
  pp = _parent_values(p, tree)
  px = jnp.take_along_axis(pp, tree.tokens[..., None], axis=-1)[..., 0]
  match = (tree.parent >= 0) & (px > _parent_values(thresh, tree))
  best = _deepest_valid(tree, match)
  pb = jnp.take_along_axis(p, best[:, None, None], axis=1)[:, 0]
  bonus = jax.random.categorical(key, jnp.log(pb)).astype(jnp.int32)
  return Acceptance(_path_to(tree, best), jnp.take_along_axis(tree.depth, best[:, None], 1)[:, 0], bonus)
