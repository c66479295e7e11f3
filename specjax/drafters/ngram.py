"""Prompt lookup decoding (Saxena 2023): propose what followed the latest earlier occurrence of the
context's last n tokens (n from max_ngram down to min_ngram). With branches > 1 the continuations of
the best few matches become sibling chains of one tree. Model-free; state-free."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from specjax.protocol import MAX_TREE_NODES, Context, Drafter, check_option_types
from specjax.engine import tree as tree_lib


MAX_NGRAM = 64     # each n-gram length is one pass over the context in the program
# Tokens per target forward at num_tokens = 1..4 (one chain), from the accepted-length histogram of the
# Spec-Bench run at num_tokens 4 (benchmarks/results/specbench_issue7_a.json: 18 prompts, 1659 steps,
# default model): a chain cut to k tokens accepts min(a, k) of the a it accepted. Longer chains are
# counted at the num_tokens-4 value (a lower bound). Prompt-dependent: code and summaries repeat more.
TAU_BY_TOKENS = (1.36, 1.64, 1.87, 2.08)


@dataclasses.dataclass(frozen=True)
class PromptLookup(Drafter):
  num_tokens: int = 4        # continuation length k (depth of each chain)
  max_ngram: int = 3
  min_ngram: int = 1
  branches: int = 1          # sibling chains from different matches
  name = "pld"

  def validate(self):
    check_option_types(self)
    if self.num_tokens < 1 or self.branches < 1:
      raise ValueError(f"pld: num_tokens and branches must be >= 1, got {self.num_tokens}, {self.branches}")
    if not 1 <= self.min_ngram <= self.max_ngram:
      raise ValueError(f"pld: need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")
    if self.max_ngram > MAX_NGRAM or self.branches * self.num_tokens >= MAX_TREE_NODES:
      raise ValueError(f"pld: need max_ngram <= {MAX_NGRAM} and branches * num_tokens < {MAX_TREE_NODES}, got "
                       f"{self.max_ngram}, {self.branches} * {self.num_tokens}")

  @functools.cached_property
  def shape(self) -> tree_lib.StaticTree:
    return tree_lib.from_choices([(b,) + (0,) * i for b in range(self.branches) for i in range(self.num_tokens)])

  @property
  def num_nodes(self):
    return self.shape.size

  @property
  def max_depth(self):
    return self.num_tokens

  def budgets(self):
    return tuple(({"num_tokens": k}, TAU_BY_TOKENS[min(k, len(TAU_BY_TOKENS)) - 1])
                 for k in range(1, self.num_tokens + 1))

  def propose(self, m, state, ctx: Context):
    toks, r = ctx.tokens, ctx.root
    B, S = toks.shape
    j = jnp.arange(S)[None, :]
    shifted = [toks] + [jnp.pad(toks[:, :S - i], ((0, 0), (i, 0))) for i in range(1, self.max_ngram)]
    tail = [jnp.take_along_axis(toks, jnp.maximum(r - i, 0)[:, None], 1) for i in range(self.max_ngram)]
    score = jnp.full((B, S), -1, jnp.int32)
    match = j < r[:, None]                      # the match must end before the root
    for n in range(1, self.max_ngram + 1):
      match = match & (shifted[n - 1] == tail[n - 1]) & (j >= n - 1) & (r[:, None] >= n - 1)
      if n >= self.min_ngram:
        score = jnp.where(match, n * S + j, score)   # longer n-grams first, then the most recent
    best, top = jax.lax.top_k(score, self.branches)                             # [B, m]
    pos = top[:, :, None] + 1 + jnp.arange(self.num_tokens)[None, None, :]         # [B, m, k]
    cont = jnp.take_along_axis(toks, jnp.minimum(pos, S - 1).reshape(B, -1), 1).reshape(pos.shape)
    tree = self.shape.draft(jnp.concatenate([ctx.root_token()[:, None], _layout(self.shape, cont)], 1))
    # Branches without a match propose nothing (parent -1), so a step with no match anywhere is cheap.
    branch = np.array([0] + [c[0] for c in self.shape.choices])
    has = jnp.concatenate([jnp.ones((B, 1), bool), (best >= 0)[:, branch[1:]]], 1)
    return dataclasses.replace(tree, parent=jnp.where(has, tree.parent, -1)), state


def _layout(shape: tree_lib.StaticTree, chains):
  """chains [B, m, k] -> [B, T-1] in the tree's node order (choice (b, 0, ..., 0) of length i+1)."""
  order = np.array([c[0] * chains.shape[2] + len(c) - 1 for c in shape.choices])
  return chains.reshape(chains.shape[0], -1)[:, order]
