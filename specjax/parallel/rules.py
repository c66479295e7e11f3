"""Partition rules: one declaration per weight of its logical axes, and one table mapping logical axes to
mesh axes (in the manner of jax-llm-examples' ShardingRules and MaxText's logical axis rules).

Megatron-style tensor parallelism over "model": attention by KV-head group (wqkv's K axis, wo's rows,
bqkv), the FFN by columns (w_gate_up's F axis, w_down's rows), the vocabulary of the embedding and the LM
head. The KV cache splits batch over "data" and KV heads over "model"; engine arrays (prompts, tokens,
lengths) batch over "data"; drafter parameters are replicated (the largest, Medusa's heads, is 2.7 MB).

A logical axis whose size the mesh axis does not divide is REPLICATED rather than padded: SmolLM2's 3 KV
heads on model=2 or 4 keep all attention weights (wqkv, wo: about 26M of its 135M parameters) and the
KV cache whole on every model shard, and every shard computes all of attention; the FFN and vocabulary,
which divide, are still split. Padding to 4 KV heads would instead cost a third more attention compute
and cache everywhere and zero heads to carry; replication keeps the arithmetic of each head unchanged.
"""
from __future__ import annotations

import dataclasses

# Logical axes of each weight, dimension by dimension (shapes: specjax.models.llama.weight_shapes).
WEIGHT_AXES = {
    "embed": ("vocab", None),                       # [V, H]
    "lm_head": (None, "vocab"),                     # [H, V]
    "wqkv": (None, None, "kv_heads", None, None),   # [L, H, K, G+2, D]
    "bqkv": (None, "kv_heads", None, None),         # [L, K, G+2, D]
    "wo": (None, "kv_heads", None),                 # [L, N*D, H]: rows grouped by KV head
    "w_gate_up": (None, None, None, "ffn"),         # [L, H, 2, F]
    "w_down": (None, "ffn", None),                  # [L, F, H]
    "attn_norm": (None, None),
    "mlp_norm": (None, None),
    "final_norm": (None,),
}
CACHE_AXES = ("batch", "kv_heads", None, None)   # each layer's KVCache.k[i], .v[i] [B, KVH, S, D]
# Drafter states: each drafter declares its own (protocol.Drafter.state_axes); rows over "data" like the
# target's cache, the drafters' own caches keep their KV heads whole, as their weights are replicated.
BATCH_AXES = ("batch", None)                           # prompts, tokens [B, S]; lengths etc. use ("batch",)

# Logical axis -> mesh axis.
RULES = {"batch": "data", "vocab": "model", "kv_heads": "model", "ffn": "model"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layout:
  """Where everything of one model lives on one mesh. split: the logical axes actually sharded (the
  others are replicated because the mesh axis does not divide them)."""
  mesh: object
  split: frozenset

  def spec(self, axes):
    from jax.sharding import PartitionSpec
    return PartitionSpec(*(RULES[a] if a in self.split else None for a in axes))

  def sharding(self, axes=()):
    """NamedSharding of an array with these logical axes (() : replicated)."""
    from jax.sharding import NamedSharding
    return NamedSharding(self.mesh, self.spec(axes))


def layout(mesh, cfg) -> Layout:
  """The layout of a model with config `cfg` on `mesh` (batch is always split: callers pad it)."""
  sizes = {"vocab": cfg.vocab, "kv_heads": cfg.kv_heads, "ffn": cfg.ffn}
  split = {"batch"} | {a for a, n in sizes.items() if n % mesh.shape[RULES[a]] == 0}
  return Layout(mesh=mesh, split=frozenset(split))


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
    import jax
    axes = dict(self.axes)
    return {k: v if k not in axes or v is None else jax.lax.with_sharding_constraint(v, self.lay.sharding(axes[k]))
            for k, v in state.items()}


def state_placement(lay: Layout, axes: dict | None) -> StatePlacement | None:
  """Pins the entries of a drafter state declared by `axes` (a drafter's state_axes)."""
  return None if axes is None else StatePlacement(lay, tuple(sorted(axes.items())))


def weight_shardings(lay: Layout, names) -> dict:
  """{weight name: NamedSharding} for the target's weights (names without a declaration: replicated)."""
  return {n: lay.sharding(WEIGHT_AXES.get(n, ())) for n in names}


def state_shardings(lay: Layout, state):
  """A tree like `state` (an NNX State of the target) of NamedShardings: each weight by its declaration,
  everything else (e.g. RoPE frequencies) replicated."""
  import jax

  def one(path, _):
    name = getattr(path[0], "key", None)
    axes = WEIGHT_AXES.get(name, ())
    return lay.sharding(axes[1:] if len(path) > 1 else axes)   # a layer weight is held layer by layer
  return jax.tree_util.tree_map_with_path(one, state)
