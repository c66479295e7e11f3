"""The decode program on a mesh: its input and output shardings, placing inputs, gathering outputs.

One `jax.jit` of engine/decode.run with in_shardings (weights by the partition rules, engine arrays with
batch over "data", drafter weights and scalars replicated) and out_shardings (batch over "data"); XLA's
SPMD partitioner inserts the collectives (the all-reduce after wo and w_down, the gathers of a
vocabulary-split embedding and LM head). Inputs are built with jax.make_array_from_process_local_data,
so on a multi-host mesh each process supplies its own rows; outputs are gathered to every process.
"""
from __future__ import annotations

import jax
import numpy as np

from specjax.engine import decode
from specjax.parallel import rules
from specjax.parallel.rules import layout  # noqa: F401 (re-exported: the program builds layouts here)


def cache_sharding(lay: rules.Layout):
  return lay.sharding(rules.CACHE_AXES)


def state_placement(lay: rules.Layout, drafter) -> rules.StatePlacement | None:
  return rules.state_placement(lay, drafter.state_axes)


def _input_shardings(lay: rules.Layout):
  """(prompt [B, P], prompt_len [B], max_new [], key [])."""
  return lay.sharding(rules.BATCH_AXES), lay.sharding(("batch",)), lay.sharding(), lay.sharding()


def in_shardings(lay: rules.Layout, params, dparams):
  rep = lay.sharding()
  return (rules.state_shardings(lay, params), jax.tree.map(lambda _: rep, dparams), *_input_shardings(lay))


def out_shardings(lay: rules.Layout) -> decode.Result:
  b1, b2 = lay.sharding(("batch",)), lay.sharding(rules.BATCH_AXES)
  return decode.Result(tokens=b2, prompt_len=b1, new_tokens=b1, forwards=b1, accepted_hist=b2, nan=b1)


def _put(x, sharding):
  """x on `sharding`. Across processes device_put cannot move a one-device array onto devices of other
  processes, so each process cuts its own shards from a host copy (every process holds the same x)."""
  if getattr(x, "sharding", None) == sharding:
    return x
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place(lay: rules.Layout, params, dparams, inputs, key):
  """Puts the weights where the rules say (no copy for weights already there: load(..., mesh=...)) and
  the inputs on the mesh. Every process passes the whole batch; each keeps the rows of its devices."""
  rep = lay.sharding()
  params = jax.tree.map(_put, params, rules.state_shardings(lay, params))
  dparams = jax.tree.map(lambda x: _put(x, rep), dparams)
  shards = _input_shardings(lay)
  host = [np.asarray(x) for x in inputs]
  inputs = tuple(jax.make_array_from_process_local_data(sh, x, x.shape) for sh, x in zip(shards, host))
  return params, dparams, inputs, _put(key, shards[-1])


def gather(res):
  """Outputs as host numpy arrays; across processes, every process receives every row."""
  if all(x.is_fully_addressable for x in jax.tree.leaves(res)):     # one process, or a mesh of its own devices
    return jax.device_get(res)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(res, tiled=True)
