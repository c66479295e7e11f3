"""The KV cache: a value passed into the model and returned, never hidden module state."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """k, v: one array per layer, each [B, KVH, S, D]; lengths: [B] int32, keys at positions < lengths[b]
  are live.

  Each KV head's keys are contiguous [S, D], the layout attention's dots read in place; with
  [.., S, KVH, D] XLA:CPU copied every layer's cache into this layout on every step. One array per
  layer rather than an [L, ...] stack for the reason the weights are (models/llama.py): XLA:CPU copies
  a layer's slice of a stack into a buffer of its own before a dot reads it, every layer, every step
  (docs/MEASUREMENTS.md#cache-one-array-per-layer). KV heads stay an axis of their own, so a mesh can shard
  them."""
  # Logical axes of each layer's k and v (parallel/rules.py maps them to mesh axes); lengths are ("batch",).
  AXES = ("batch", "kv_heads", "seq", "head_dim")
  k: tuple
  v: tuple
  lengths: jax.Array

  @classmethod
  def zeros(cls, *, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32):
    shape = (batch, kv_heads, max_len, head_dim)
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(layers))
    return cls(zeros(), zeros(), jnp.zeros((batch,), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k[0].shape[2]

  def write(self, k_new: jax.Array, v_new: jax.Array, rows: jax.Array | None = None) -> "KVCache":
    """Writes fresh keys/values at [lengths, lengths + n) per row; lengths are not advanced.

    k_new, v_new: [L, B, T, KVH, D] from one forward. rows: optional [B, n] indices into T picking
    (in order) which of the T fresh entries to keep, e.g. the accepted root-to-leaf path of a tree.
    The caller guarantees lengths + n <= max_len (dynamic_update_slice would clamp, not fail).
    """
    if rows is not None:
      pick = jax.vmap(lambda x, r: x[:, r], in_axes=(1, 0), out_axes=1)
      k_new, v_new = pick(k_new, rows), pick(v_new, rows)
    k_new, v_new = jnp.swapaxes(k_new, 2, 3), jnp.swapaxes(v_new, 2, 3)       # [L, B, KVH, n, D]
    put = lambda cs, xs: tuple(put_rows(c, x, self.lengths, axis=2) for c, x in zip(cs, xs))
    return KVCache(put(self.k, k_new), put(self.v, v_new), self.lengths)

  def advance(self, n: jax.Array) -> "KVCache":
    return dataclasses.replace(self, lengths=self.lengths + n.astype(jnp.int32))


def put_rows(buf: jax.Array, x: jax.Array, start: jax.Array, *, batch_axis: int = 0, axis: int = 1) -> jax.Array:
  """For each row b of the batch axis: buf[.., b, .., start[b] : start[b] + n, ..] = x[.., b, .., :n, ..]
  (x shaped like buf but n long on `axis`). One dynamic_update_slice per row, each done in place: the
  same update vmapped lowers to a scatter, which XLA:CPU runs by copying the whole buffer every step
  (docs/MEASUREMENTS.md#cache-writes-per-row). Up to _UNROLL_ROWS rows the
  updates are unrolled; more rows (statistical tests run thousands) loop, so the program stays small."""
  x = x.astype(buf.dtype)

  def one(b, buf):
    idx = [jnp.int32(0)] * buf.ndim
    idx[batch_axis], idx[axis] = jnp.asarray(b, jnp.int32), start[b].astype(jnp.int32)
    return jax.lax.dynamic_update_slice(buf, jax.lax.dynamic_slice_in_dim(x, b, 1, axis=batch_axis), idx)

  rows = buf.shape[batch_axis]
  if rows > _UNROLL_ROWS:
    return jax.lax.fori_loop(0, rows, one, buf)
  for b in range(rows):
    buf = one(b, buf)
  return buf


_UNROLL_ROWS = 64
