"""The types every drafter and the engine share. Lowest layer of the package: the engine, the
acceptance rules and every drafter import from here, never from each other.

    state = drafter.init(m, ctx, prefill)          # once, after prefill
    tree, state = drafter.propose(m, state, ctx)   # before each target forward
    state = drafter.update(m, state, ctx, step)    # after acceptance and commit

`m` is `Models(target, drafter)`: the target module (its pieces: `embed_tokens`, `layers`, `norm`,
`head`, ...) and the drafter's own NNX module merged from the drafter's params, both built from
PROGRAM ARGUMENTS inside the compiled program. Drafters are frozen (hashable) dataclasses whose
fields are static configuration; weights are never fields of the static part (see `Drafter.params`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import types
import typing
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class DraftTree:
  """tokens, parent, depth: [B, T] int32; mask: [B, T, T] bool, mask[b, i, j] = node i sees node j
  (ancestor-or-self for candidates). draft_probs: [B, T, V] distribution each node was sampled from,
  or None for deterministic candidates. max_depth: static upper bound of candidate depth.

  What lossless sampling (engine/accept.sample) needs: sampled siblings are independent draws from the
  q they report (drawing them without replacement while reporting q biases the output; tested in
  tests/test_sampling.py); a deterministic candidate (top-k, n-gram) counts as q = one-hot, so with
  draft_probs set every node must carry its q, one-hot for a deterministic node."""
  tokens: jax.Array
  parent: jax.Array
  depth: jax.Array
  mask: jax.Array
  draft_probs: jax.Array | None = None
  max_depth: int = 0


jax.tree_util.register_dataclass(DraftTree, data_fields=["tokens", "parent", "depth", "mask", "draft_probs"],
                                 meta_fields=["max_depth"])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Acceptance:
  """path [B, D+1] accepted node indices from the root (entries past n are padding); n [B] accepted
  candidates (0..D); bonus [B] the token that follows the accepted path."""
  path: jax.Array
  n: jax.Array
  bonus: jax.Array

  def last_node(self) -> jax.Array:
    """[B] the deepest accepted node (the root when nothing was accepted)."""
    return jnp.take_along_axis(self.path, self.n[:, None], 1)[:, 0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Context:
  """What a drafter may read. tokens [B, S]: prompt then generated tokens; tokens[b, root[b]] is the
  last committed token (the next tree's root); prompt_len [B]; done [B]. key: in `propose` only, a
  fresh PRNG key for drafters that sample their candidates, independent of the acceptance's draws
  (the ratio test is lossless only for candidates drawn from q afresh at every step)."""
  tokens: jax.Array
  root: jax.Array
  prompt_len: jax.Array
  done: jax.Array
  key: jax.Array | None = None

  def root_token(self) -> jax.Array:
    return jnp.take_along_axis(self.tokens, self.root[:, None], 1)[:, 0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Prefill:
  """The prompt's forward, all prompt tokens but the last (which is the first tree's root).
  hidden [B, P-1, H]: last residual before the final norm at each prefilled position (rows are
  right-padded: row b's last real position is prompt_len[b] - 2); layer_hidden {layer: [B, P-1, H]}
  for the layers the drafter declared in `capture`."""
  hidden: jax.Array
  layer_hidden: dict


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Step:
  """What one verify step produced: the tree, the target's logits [B, T, V], its last residual
  before the final norm [B, T, H] and captured layers {layer: [B, T, H]} at every node, the
  acceptance, and the count of tokens committed per row."""
  tree: DraftTree
  logits: jax.Array
  hidden: jax.Array
  layer_hidden: dict
  acceptance: Acceptance
  committed: jax.Array


@dataclasses.dataclass(frozen=True)
class Models:
  """The modules a drafter may call inside the program: `target` (the target model, frozen) and
  `drafter` (the drafter's own module merged from its params; None for weightless drafters)."""
  target: Any
  drafter: Any = None


# Field metadata of drafter fields. Unmarked: a user option, stored with trained weights (a load refuses
# another value). NOT_OPTION: not an option (the architecture a checkpoint records, measurements); stored.
# BUDGET: an option that sizes the tree, which suits the machine that decodes: never stored, a load takes
# the given value or the default. DERIVED: set when the drafter is built or loaded (its weights, the
# target's record): neither an option nor stored as configuration.
NOT_OPTION = types.MappingProxyType({"option": False})
BUDGET = types.MappingProxyType({"budget": True})
DERIVED = types.MappingProxyType({"option": False, "stored": False})


def options(cls) -> list[str]:
  """The names of a drafter class's (or instance's) options: its fields not marked NOT_OPTION or DERIVED."""
  return [f.name for f in dataclasses.fields(cls) if f.metadata.get("option", True)]


def stored(cls) -> list[str]:
  """The fields a checkpoint of this drafter keeps beside its weights: all but BUDGET and DERIVED ones."""
  return [f.name for f in dataclasses.fields(cls) if f.metadata.get("stored", True) and not f.metadata.get("budget")]


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: missing, truncated, corrupted, or for another target."""


def target_record(target) -> dict:
  """What trained weights record about the target they were made for (a checkpoint's "target")."""
  c = target.cfg
  return {"arch": c.arch, "hidden": c.hidden, "layers": c.layers, "heads": c.heads, "kv_heads": c.kv_heads,
          "vocab": c.vocab, "fingerprint": target.fingerprint, "path": pathlib.Path(target.path).name}


def check_record(recorded: dict, target, where: str) -> None:
  """Raises CheckpointError when `target` is not the model `recorded` (a target_record) describes."""
  mine = target_record(target)
  for key in ("arch", "hidden", "layers", "vocab", "fingerprint"):
    if recorded.get(key) != mine[key]:
      raise CheckpointError(f"{where} was trained for another target ({key} {recorded.get(key)!r}, this target has "
                            f"{mine[key]!r}; trained for {recorded.get('path', '?')}); train one for this model "
                            "with `specjax train`")


@dataclasses.dataclass(frozen=True)
class Drafter:
  """Base class. Subclasses set `num_nodes` and `max_depth` (static) and override the three methods.

  A tree whose non-root nodes all have parent -1 proposes nothing; the engine then runs a one-token
  forward, unless `skip_empty_trees` is False (drafters that need every node's logits, e.g. lookahead).

  Drafters with weights define `graphdef` (the NNX graphdef of their module, derived from the static
  fields) and carry their weights in `params`: that field takes no part in equality or hashing, and
  the engine strips it from the static configuration and passes it as an argument of the compiled
  program. So new weights never recompile and are never stale. `capture` lists the target layers
  whose residual outputs the drafter reads from every verification (and from the prefill).
  """
  name = "drafter"
  skip_empty_trees = True
  capture = ()       # a class attribute or property of static layer indices, not an option
  budget_keys = ()   # the options a held-out tau key "a/b/c" sets, in order (see `budgets`)
  # The logical axes of the state dict's entries (a prefix; the rest replicated), pinned on a mesh by
  # program/sharded.StatePlacement; entries not declared (and None: all) are left to XLA's propagation.
  state_axes = None
  params: object = dataclasses.field(default=None, compare=False, hash=False, repr=False, kw_only=True,
                                     metadata=DERIVED)
  # ((budget key, held-out tau), ...) recorded when the weights were trained; not an option and not part
  # of the program (no effect on equality, hashing or the executable cache).
  heldout_tau: tuple = dataclasses.field(default=(), compare=False, hash=False, repr=False, kw_only=True,
                                         metadata=DERIVED)
  # JSON of the target_record of the model the weights were trained for ("": none recorded), set at load
  trained_for: str = dataclasses.field(default="", compare=False, hash=False, repr=False, kw_only=True,
                                       metadata=DERIVED)

  def module(self):
    """Drafters with weights: their NNX module with placeholder weights shaped by the static fields (built
    under nnx.eval_shape, nothing allocated). `graphdef` is split from it; a checkpoint's tensors are read
    against it (io/checkpoint.py). None: no weights of this kind."""
    return None

  @functools.cached_property
  def graphdef(self):
    return None if type(self).module is Drafter.module else nnx.split(nnx.eval_shape(self.module))[0]

  @property
  def num_nodes(self) -> int:
    raise NotImplementedError

  @property
  def max_depth(self) -> int:
    raise NotImplementedError

  def budgets(self) -> tuple[tuple[dict, float], ...]:
    """The tree budgets `tree_budget="auto"` may choose from: (options that size the tree, expected tokens
    per target forward) each, from measurements only (held-out tau recorded at training, or a recorded
    benchmark for weightless drafters). Empty: nothing measured, so nothing to choose from."""
    return tuple((dict(zip(self.budget_keys, map(int, key.split("/")))), float(tau))
                 for key, tau in self.heldout_tau if len(key.split("/")) == len(self.budget_keys))

  def gated(self, cost_ratio: float) -> "Drafter | None":
    """For drafters that decide at each step whether to draft at all (Cerberus's gate): this drafter deciding
    for a machine where a drafting step costs `cost_ratio` plain steps (tree_budget="auto" measures it; 1.0:
    draft at every step, how the drafting step is timed). None: no per-step decision, or nothing measured to
    decide by."""
    return None

  def validate(self) -> None:
    """Raises ValueError on invalid options, before anything is compiled. Overrides call
    check_option_types(self) first."""
    check_option_types(self)

  def check_target(self, target) -> None:
    """Raises ValueError when this drafter's weights were made for another target. Overrides call
    super().check_target(target) first: the recorded target's check is the most telling error."""
    if self.trained_for and json.loads(self.trained_for).get("fingerprint"):
      check_record(json.loads(self.trained_for), target, f"the {self.name} checkpoint")

  def init(self, m: Models, ctx: Context, prefill: Prefill):
    return ()

  def propose(self, m: Models, state, ctx: Context) -> tuple[DraftTree, object]:
    raise NotImplementedError

  def update(self, m: Models, state, ctx: Context, step: Step):
    return state


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
