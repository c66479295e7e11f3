"""Lookahead decoding (Fu et al., ICML 2024): Jacobi iteration over a 2-D window harvests n-grams
into a pool; pooled n-grams that start with the root are verified in the same forward.

One forward carries three kinds of nodes under one mask (T = 1 + (N-1)W + G(N-1)):
  root | lookahead window: N-1 levels x W columns | verification: G chains of N-1 tokens.
Window node (level l, column i) sits at position root+1+i+l and sees the root, level-0 columns <= i,
and column i's levels 1..l: a contiguous guessed context. Window nodes are not candidates (parent -1).

Pool: a per-row ring buffer of C n-grams with insertion stamps (most recent wins at lookup; oldest
evicted first), deduplicated on insert and seeded with the prompt's own n-grams.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from specjax.protocol import MAX_TREE_NODES, Context, Drafter, Step, check_option_types
from specjax.engine import tree as tree_lib


# Tokens per target forward of the default window (W 2, N 3, G 1) on Spec-Bench's dev prompts (BENCHMARKS.md,
# issue 3: tau 1.38 over 18 prompts, default model); the one lookahead setting measured on this target.
DEFAULT_TAU = 1.38
MAX_POOL = 1 << 20      # n-grams per row: [batch, pool, ngram] int32 lives in the loop carry


@dataclasses.dataclass(frozen=True)
class Lookahead(Drafter):
  # Defaults sized for CPU, where a 7-node forward already costs ~1.5x a one-token step
  # (BENCHMARKS.md); Spec-Bench's GPU setting is window=7, ngram=5, guesses=7 (T = 57).
  window: int = 2           # W
  ngram: int = 3            # N
  guesses: int = 1          # G: pooled n-grams verified per step
  pool_size: int = 512      # C: n-grams kept per row
  seed_from_prompt: bool = True
  name = "lookahead"
  state_axes = {"window": ("batch",), "pool": ("batch",), "stamp": ("batch",), "count": ("batch",)}
  skip_empty_trees = False     # the Jacobi window needs its logits every step

  def validate(self):
    check_option_types(self)
    if self.window < 1 or self.ngram < 2 or self.guesses < 1:
      raise ValueError(f"lookahead: need window >= 1, ngram >= 2, guesses >= 1; got "
                       f"{self.window}, {self.ngram}, {self.guesses}")
    if self.pool_size < self.guesses:
      raise ValueError(f"lookahead: pool_size ({self.pool_size}) must be >= guesses ({self.guesses})")
    if self.num_nodes > MAX_TREE_NODES or self.pool_size > MAX_POOL:
      raise ValueError(f"lookahead: need 1 + (ngram - 1) * (window + guesses) <= {MAX_TREE_NODES} and pool_size <= "
                       f"{MAX_POOL}, got {self.num_nodes} and {self.pool_size}")

  @property
  def num_nodes(self):
    return 1 + (self.ngram - 1) * (self.window + self.guesses)

  @property
  def max_depth(self):
    return self.ngram - 1

  def budgets(self):
    return (({"window": 2, "ngram": 3, "guesses": 1}, DEFAULT_TAU),)

  @functools.cached_property
  def layout(self):
    """(parent [T], depth [T], mask [T, T]) in numpy."""
    W, L, G, T = self.window, self.ngram - 1, self.guesses, self.num_nodes
    parent = np.full(T, -1)
    depth = np.zeros(T, int)
    mask = np.eye(T, dtype=bool)
    mask[:, 0] = True
    win = lambda l, i: 1 + l * W + i
    for l in range(L):
      for i in range(W):
        t = win(l, i)
        depth[t] = 1 + i + l
        mask[t, [win(0, j) for j in range(i + 1)]] = True
        mask[t, [win(m, i) for m in range(1, l + 1)]] = True
    for g in range(G):
      for m in range(L):
        t = 1 + L * W + g * L + m
        parent[t] = 0 if m == 0 else t - 1
        depth[t] = m + 1
        mask[t] |= mask[parent[t]]
    return parent, depth, mask

  def init(self, m, ctx: Context, prefill):
    B, S = ctx.tokens.shape
    L, W, N, C = self.ngram - 1, self.window, self.ngram, self.pool_size
    # Start the window from prompt tokens (any guess works; verification decides).
    back = jnp.arange(L * W)[None, :]
    window = jnp.take_along_axis(ctx.tokens, jnp.clip(ctx.root[:, None] - L * W + back, 0, S - 1), 1)
    state = dict(window=window.reshape(B, L, W), pool=jnp.full((B, C, N), -1, jnp.int32),
                 stamp=jnp.full((B, C), -1, jnp.int32), count=jnp.zeros(B, jnp.int32))
    if self.seed_from_prompt:
      start = jnp.arange(S - N + 1)
      grams = jnp.stack([ctx.tokens[:, k:S - N + 1 + k] for k in range(N)], -1)   # [B, S-N+1, N]
      valid = start[None, :] + N - 1 <= ctx.root[:, None]
      state = _insert(state, grams, valid)
    return state

  def propose(self, m, state, ctx: Context):
    B = ctx.tokens.shape[0]
    parent, depth, mask = self.layout
    root = ctx.root_token()
    score = jnp.where(state["pool"][:, :, 0] == root[:, None], state["stamp"], -1)
    slots = jax.lax.top_k(score, self.guesses)[1]                                  # [B, G]
    chains = jnp.take_along_axis(state["pool"], slots[:, :, None], 1)[:, :, 1:]     # [B, G, N-1]
    tokens = jnp.concatenate([root[:, None], state["window"].reshape(B, -1), chains.reshape(B, -1)], 1)
    bc = lambda a: jnp.broadcast_to(jnp.asarray(a), (B,) + a.shape)
    tree = tree_lib.DraftTree(jnp.maximum(tokens, 0).astype(jnp.int32), bc(parent.astype(np.int32)),
                              bc(depth.astype(np.int32)), bc(mask), None, self.max_depth)
    return tree, state

  def update(self, m, state, ctx: Context, step: Step):
    L, W = self.ngram - 1, self.window
    last = 1 + (L - 1) * W + jnp.arange(W)
    y = jnp.argmax(step.logits[:, last], -1).astype(jnp.int32)                     # [B, W] Jacobi update
    window = state["window"]
    grams = jnp.concatenate([window.transpose(0, 2, 1), y[:, :, None]], -1)        # [B, W, N]
    state = _insert(state, grams, jnp.ones(grams.shape[:2], bool) & ~ctx.done[:, None])
    return dict(state, window=jnp.concatenate([window[:, 1:], y[:, None]], 1))


def _insert(state, grams, valid):
  """Adds n-grams [B, M, N] where valid [B, M], skipping ones already pooled or repeated in the batch."""
  pool, stamp, count = state["pool"], state["stamp"], state["count"]
  B, C, _ = pool.shape
  M = grams.shape[1]
  in_pool = jnp.any(jnp.all(grams[:, :, None] == pool[:, None], -1), -1)            # [B, M]
  same = jnp.all(grams[:, :, None] == grams[:, None], -1)                            # [B, M, M]
  earlier = jnp.any(same & jnp.tril(jnp.ones((M, M), bool), -1)[None] & valid[:, None, :], -1)
  keep = valid & ~in_pool & ~earlier
  rank = jnp.cumsum(keep, 1) - 1
  total = keep.sum(1)
  keep = keep & (rank >= total[:, None] - C)       # more than C new ones: keep the newest C
  slot = jnp.where(keep, (count[:, None] + rank) % C, C)                           # C = dropped
  rows = jnp.arange(B)[:, None]
  pool = pool.at[rows, slot].set(grams, mode="drop")
  stamp = stamp.at[rows, slot].set(count[:, None] + rank, mode="drop")
  return dict(state, pool=pool, stamp=stamp, count=count + total)
