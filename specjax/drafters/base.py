"""The drafter interface: three pure functions over a drafter state that lives in the loop carry.

    state = drafter.init(ctx)                      # once, after prefill
    tree, state = drafter.propose(state, ctx)      # before each target forward
    state = drafter.update(state, ctx, step)       # after acceptance and commit

Drafters are frozen (hashable) dataclasses: their fields are static configuration, compiled into the
program; everything that changes lives in `state` (any pytree).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specjax.engine import tree as tree_lib
from specjax.engine.accept import Acceptance


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Context:
  """What a drafter may read. tokens [B, S]: prompt then generated tokens; tokens[b, root[b]] is the
  last committed token (the next tree's root); prompt_len [B]; done [B]."""
  tokens: jax.Array
  root: jax.Array
  prompt_len: jax.Array
  done: jax.Array

  def root_token(self) -> jax.Array:
    return jnp.take_along_axis(self.tokens, self.root[:, None], 1)[:, 0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Step:
  """What one verify step produced: the tree, the target's logits [B, T, V] and final hidden state
  [B, T, H] at every node, the acceptance, and the count of tokens committed per row."""
  tree: tree_lib.DraftTree
  logits: jax.Array
  hidden: jax.Array
  acceptance: Acceptance
  committed: jax.Array


@dataclasses.dataclass(frozen=True)
class Drafter:
  """Base class. Subclasses set `num_nodes` and `max_depth` (static) and override the three methods.

  A tree whose non-root nodes all have parent -1 proposes nothing; the engine then runs a one-token
  forward, unless `skip_empty_trees` is False (drafters that need every node's logits, e.g. lookahead).
  """
  name = "drafter"
  skip_empty_trees = True

  @property
  def num_nodes(self) -> int:
    raise NotImplementedError

  @property
  def max_depth(self) -> int:
    raise NotImplementedError

  def validate(self) -> None:
    """Raises ValueError on invalid options, before anything is compiled."""

  def init(self, ctx: Context):
    return ()

  def propose(self, state, ctx: Context) -> tuple[tree_lib.DraftTree, object]:
    raise NotImplementedError

  def update(self, state, ctx: Context, step: Step):
    return state


@dataclasses.dataclass(frozen=True)
class NoDrafter(Drafter):
  """Autoregressive decoding: a one-node tree (just the root)."""
  name = "none"

  @property
  def num_nodes(self) -> int:
    return 1

  @property
  def max_depth(self) -> int:
    return 0

  def propose(self, state, ctx):
    return tree_lib.chain(0).draft(ctx.root_token()[:, None]), state
