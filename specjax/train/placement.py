"""Drafter training on a device mesh (data parallelism): where `loop.fit`'s arrays live.

The global batch is split over "data" (every array of a batch has the batch as its leading axis); the
drafter's parameters and its optimiser state are replicated (the largest, Medusa's heads, is a few MB:
splitting them would cost collectives for nothing); the target's frozen pieces the losses read (the
embedding, the LM head over the draft vocabulary) and, for features on the fly, the target's weights are
placed by the partition rules decoding uses (parallel/rules.py via program/sharded.py). One jax.jit with
these in/out shardings; XLA's SPMD partitioner turns the losses' means over the batch into all-reduces,
so a step equals the one-device step on the same global batch up to float32 summation order.
"""
from __future__ import annotations

import dataclasses

import jax
from jax.sharding import NamedSharding, PartitionSpec

from specjax.program import sharded

# Logical axes of the recipes' consts (train/recipe.py, train/sequence.py); a const not named here is replicated.
CONST_AXES = {"embed": ("vocab", None), "head_w": (None, "vocab")}


@dataclasses.dataclass(frozen=True)
class Placement:
  """Shardings of one training run on `lay.mesh`."""
  lay: sharded.Layout

  @property
  def data(self) -> int:
    return self.lay.mesh.shape["data"]

  def replicated(self, tree):
    return jax.tree.map(lambda _: self.lay.sharding(), tree)

  def batch_sharding(self) -> NamedSharding:
    """Every batch array split over "data" along its leading axis (a prefix of any batch tree)."""
    return NamedSharding(self.lay.mesh, PartitionSpec("data"))

  def const_shardings(self, consts: dict) -> dict:
    """Each const by CONST_AXES where the mesh divides its dimensions (the draft vocabulary may not), else replicated."""
    out = {}
    for k, v in consts.items():
      axes = CONST_AXES.get(k, ())
      spec = self.lay.spec(axes)
      ok = all(n % self.lay.mesh.shape[m] == 0 for n, m in zip(v.shape, spec) if m is not None)
      out[k] = self.lay.sharding(axes if ok and len(axes) == v.ndim else ())
    return out

  def target_shardings(self, tparams):
    """The target's weights (an NNX State) as decoding places them."""
    return sharded.state_shardings(self.lay, tparams)

  def check_batch(self, batch: int):
    if batch % self.data:
      raise ValueError(f"the batch ({batch}) must be a multiple of the mesh's data axis ({self.data}): "
                       "each data shard takes an equal part of the global batch")

  def put(self, tree, shardings):
    """tree placed on `shardings` (a tree like it, or one sharding for every leaf)."""
    if isinstance(shardings, jax.sharding.Sharding):
      return jax.tree.map(lambda x: sharded.put(x, shardings), tree)
    return jax.tree.map(sharded.put, tree, shardings)


def placement(mesh, cfg) -> Placement | None:
  """The placement of a training run of a drafter for a target with config `cfg` on `mesh` (None: one device)."""
  return None if sharded.check_mesh(mesh) is None else Placement(sharded.layout(mesh, cfg))
