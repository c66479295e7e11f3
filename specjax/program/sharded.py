"""The decode program on a mesh: its input and output shardings, placing inputs, gathering outputs.

Every sharding comes from a declaration of logical axes (the target's weights: models/llama.weight_info; the
KV cache: cache.KVCache.AXES; a drafter's state: its state_axes) and the one table of parallel/rules.py.
One `jax.jit` of engine/decode.run with in_shardings (weights as declared, engine arrays with batch over
"data", drafter weights and scalars replicated) and out_shardings (batch over "data"); XLA's SPMD
partitioner inserts the collectives (the all-reduce after wo and w_down, the gathers of a vocabulary-split
embedding and LM head). Inputs are built with jax.make_array_from_process_local_data,
so on a multi-host mesh each process supplies its own rows; outputs are gathered to every process.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from specjax.cache import KVCache
from specjax.engine import decode
from specjax.models.config import ModelConfig
from specjax.models.llama import LAYER_WEIGHTS, weight_info
from specjax.parallel.rules import RULES

BATCH_AXES = ("batch", "seq")    # prompts, tokens [B, S]; prompt lengths etc. [B] are ("batch",)


def check_mesh(mesh):
  """mesh, when it is None or a jax.sharding.Mesh; else TypeError."""
  if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"mesh must be a device mesh from specjax.make_mesh(...), got {type(mesh).__name__}")
  return mesh


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layout:
  """Where everything of the model with config `cfg` lives on one mesh. split: the logical axes actually
  sharded (the others are replicated because the mesh axis does not divide them)."""
  mesh: object
  cfg: ModelConfig
  split: frozenset

  def spec(self, axes) -> PartitionSpec:
    return PartitionSpec(*(RULES[a] if a in self.split else None for a in axes))

  def sharding(self, axes=()) -> NamedSharding:
    """NamedSharding of an array with these logical axes (() : replicated)."""
    return NamedSharding(self.mesh, self.spec(axes))


def layout(mesh, cfg: ModelConfig) -> Layout:
  """The layout of a model with config `cfg` on `mesh`: a logical axis of the rules is split when its mesh
  axis divides every weight dimension declared with it (models/llama.weight_info), else replicated
  (parallel/rules.py says why). Batch has no weight dimension and is always split: callers pad rows."""
  sizes = {}
  for info in weight_info(cfg).values():
    for a, n in zip(info.axes, info.shape):
      sizes.setdefault(a, []).append(n)
  split = {a for a, m in RULES.items() if all(n % mesh.shape[m] == 0 for n in sizes.get(a, ()))}
  return Layout(mesh=mesh, cfg=cfg, split=frozenset(split))


def _held_axes(name: str, axes: tuple) -> tuple:
  """A weight's logical axes as the model holds it: a layer weight layer by layer (no "layers" axis)."""
  return axes[1:] if name in LAYER_WEIGHTS else axes


def weight_shardings(mesh, cfg: ModelConfig) -> dict:
  """{weight name: NamedSharding} of each target weight as the model holds it, to load it straight onto
  `mesh` (the `shardings` of specjax.io.load and models/llama.Llama)."""
  lay = layout(mesh, cfg)
  return {n: lay.sharding(_held_axes(n, i.axes)) for n, i in weight_info(cfg).items()}


def state_shardings(lay: Layout, state):
  """A tree like `state` (an NNX State of the target) of NamedShardings: each weight by its declaration,
  everything else (e.g. RoPE frequencies) replicated."""
  info = weight_info(lay.cfg)

  def one(path, _):
    name = getattr(path[0], "key", None)
    return lay.sharding(_held_axes(name, info[name].axes) if name in info else ())
  return jax.tree_util.tree_map_with_path(one, state)


def cache_sharding(lay: Layout) -> NamedSharding:
  return lay.sharding(KVCache.AXES)


@dataclasses.dataclass(frozen=True)
class StatePlacement:
  """Pins a drafter's declared state entries where the drafter's state_axes say, inside the program (the
  engine calls it after init and after every update, so the loop carry keeps one layout). Hashable: it
  is part of the program's static configuration."""
  lay: Layout
  axes: tuple          # ((entry, logical axes), ...)

  def __call__(self, state):
    if not isinstance(state, dict):
      return state
    axes = dict(self.axes)
    return {k: v if k not in axes or v is None else jax.lax.with_sharding_constraint(v, self.lay.sharding(axes[k]))
            for k, v in state.items()}


def state_placement(lay: Layout, drafter) -> StatePlacement | None:
  """Pins the entries of the drafter's state that its state_axes declare (None: nothing to pin)."""
  axes = drafter.state_axes
  return None if axes is None else StatePlacement(lay, tuple(sorted(axes.items())))


def _input_shardings(lay: Layout):
  """(prompt [B, P], prompt_len [B], max_new [], key [])."""
  return lay.sharding(BATCH_AXES), lay.sharding(("batch",)), lay.sharding(), lay.sharding()


def in_shardings(lay: Layout, params, dparams):
  rep = lay.sharding()
  return (state_shardings(lay, params), jax.tree.map(lambda _: rep, dparams), *_input_shardings(lay))


def out_shardings(lay: Layout) -> decode.Result:
  b1, b2 = lay.sharding(("batch",)), lay.sharding(BATCH_AXES)
  return decode.Result(tokens=b2, prompt_len=b1, new_tokens=b1, forwards=b1, accepted_hist=b2, nan=b1)


def put(x, sharding):
  """x on `sharding`. Across processes device_put cannot move a one-device array onto devices of other
  processes, so each process cuts its own shards from a host copy (every process holds the same x)."""
  if getattr(x, "sharding", None) == sharding:
    return x
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place(lay: Layout, params, dparams, inputs, key):
  """Puts the weights where the rules say (no copy for weights already there: load(..., mesh=...)) and
  the inputs on the mesh. Every process passes the whole batch; each keeps the rows of its devices."""
  rep = lay.sharding()
  params = jax.tree.map(put, params, state_shardings(lay, params))
  dparams = jax.tree.map(lambda x: put(x, rep), dparams)
  shards = _input_shardings(lay)
  host = [np.asarray(x) for x in inputs]
  inputs = tuple(jax.make_array_from_process_local_data(sh, x, x.shape) for sh, x in zip(shards, host))
  return params, dparams, inputs, put(key, shards[-1])


def gather(res):
  """Outputs as host numpy arrays; across processes, every process receives every row."""
  if all(x.is_fully_addressable for x in jax.tree.leaves(res)):     # one process, or a mesh of its own devices
    return jax.device_get(res)
  return multihost_utils.process_allgather(res, tiled=True)
