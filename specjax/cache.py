"""The KV cache: a value passed into the model and returned, never hidden module state."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """k, v: [L, B, S, KVH, D]; lengths: [B] int32, keys at positions < lengths[b] are live."""
  k: jax.Array
  v: jax.Array
  lengths: jax.Array

  @classmethod
  def zeros(cls, *, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32):
    shape = (layers, batch, max_len, kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k.shape[2]

  def write(self, k_new: jax.Array, v_new: jax.Array, rows: jax.Array | None = None) -> "KVCache":
    """Writes fresh keys/values at [lengths, lengths + n) per row; lengths are not advanced.

    k_new, v_new: [L, B, T, KVH, D] from one forward. rows: optional [B, n] indices into T picking
    (in order) which of the T fresh entries to keep, e.g. the accepted root-to-leaf path of a tree.
    The caller guarantees lengths + n <= max_len (dynamic_update_slice would clamp, not fail).
    """
    if rows is not None:
      pick = jax.vmap(lambda x, r: x[:, r], in_axes=(1, 0), out_axes=1)
      k_new, v_new = pick(k_new, rows), pick(v_new, rows)
    put = jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice_in_dim(c, x, s, axis=1), in_axes=(1, 1, 0), out_axes=1)
    return KVCache(put(self.k, k_new.astype(self.k.dtype), self.lengths),
                   put(self.v, v_new.astype(self.v.dtype), self.lengths), self.lengths)

  def advance(self, n: jax.Array) -> "KVCache":
    return dataclasses.replace(self, lengths=self.lengths + n.astype(jnp.int32))
