"""The drafter interface: three pure functions over a drafter state that lives in the loop carry.

    state = drafter.init(ctx)                      # once, after prefill
    tree, state = drafter.propose(state, ctx)      # before each target forward
    state = drafter.update(state, ctx, step)       # after acceptance and commit

Drafters are frozen (hashable) dataclasses: their fields are static configuration, compiled into the
program; everything that changes lives in `state` (any pytree).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing

import jax
import jax.numpy as jnp
import numpy as np

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
    """Raises ValueError on invalid options, before anything is compiled. Overrides call
    check_option_types(self) first."""
    check_option_types(self)

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


# The most nodes a draft tree may have: verifying more is far past any speedup, and a tree of millions
# of nodes exhausts memory while the program is built.
MAX_TREE_NODES = 4096


def check_option_types(drafter: Drafter) -> None:
  """Raises ValueError unless every option holds its declared type: an int field a real integer (not
  1.5, True, None or "8"), a bool field True or False (not 1 or "abc"), a float field a finite number,
  a str field a string; `X | None` also takes None. Fields of other types are the drafter's to check."""
  try:
    hints = typing.get_type_hints(type(drafter))
  except Exception:                 # an annotation that does not resolve: nothing to check against
    return
  for f in dataclasses.fields(drafter):
    want = hints.get(f.name)
    args = typing.get_args(want) if typing.get_origin(want) in (typing.Union, types.UnionType) else (want,)
    v = getattr(drafter, f.name)
    if v is None and type(None) in args:
      continue
    for kind, ok, what in _OPTION_TYPES:
      if kind in args:
        if not ok(v):
          raise ValueError(f"{drafter.name}: option {f.name} must be {what}, got {v!r}")
        break


_OPTION_TYPES = (   # (declared type, accepts(value), what to call it); bool before int: bool is an int
    (bool, lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    (int, lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)), "an integer"),
    (float, lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
     and math.isfinite(v), "a finite number"),
    (str, lambda v: isinstance(v, str), "a string"),
)
