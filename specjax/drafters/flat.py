"""Drafters whose weights are one flat dict of named tensors (Clover, EAGLE): the NNX module holding
them, the decoder layers they build like the target's, and the check of the target's sizes.

Decoder-layer weights are declared only through the target's own `weight_shapes` and run only
through its `decoder_layer`, so a change of the target's fused layouts changes the drafters with it.
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax.models.config import ModelConfig
from specjax.models.llama import LAYER_WEIGHTS, decoder_layer, rope_frequencies, weight_shapes
from specjax.protocol import NOT_OPTION, Drafter, target_record


def dims_of(cfg) -> tuple:
  """The target sizes the drafter's weights depend on: (hidden, heads, kv_heads, head_dim, ffn, qkv_bias)."""
  return (cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.ffn, cfg.qkv_bias)


def layer_shapes(dims: tuple, layers: int, prefix: str) -> dict[str, tuple[int, ...]]:
  """`prefix/NAME` -> shape for `layers` decoder layers like the target's (the target's declaration)."""
  H, N, K, D, F, bias = dims
  cfg = ModelConfig(vocab=1, hidden=H, layers=layers, heads=N, kv_heads=K, head_dim=D, ffn=F, qkv_bias=bias,
                    tie_embeddings=True)
  return {f"{prefix}/{n}": s for n, s in weight_shapes(cfg).items() if n in LAYER_WEIGHTS}


def last_layer(model, name: str, layers: int) -> np.ndarray:
  """The target's last layer's weight `name` (any layout), float32, repeated `layers` times."""
  return np.repeat(np.asarray(getattr(model, name)[-1][...], np.float32)[None], layers, 0)


def layer_weights(p: dict, prefix: str, i: int) -> dict:
  """Layer i's weights (layer axis removed) from a flat dict declared by `layer_shapes`."""
  return {n.split("/")[1]: w[i] for n, w in p.items() if n.startswith(prefix + "/")}


def run_layer(cfg, w: dict, x, positions, mask, kv=None, live=None):
  """One decoder layer like the target's over x [B, T, H] at rope positions [B, T]. mask [B, T, T]
  among the T new entries; kv: earlier entries' (k, v) [B, KVH, S, D] and live [B, T, S] which of
  them each new entry sees (per query: tree entries see their own ancestors). Returns (x, k, v)."""
  ang = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_frequencies(cfg))
  return decoder_layer(cfg, w, x, jnp.cos(ang), jnp.sin(ang), kv, mask[:, None, None],
                       None if live is None else live[:, None, None])


def prefill_entries(ctx, prefill):
  """The entries a drafter builds over the prefill (entry t reads the target at t and the token
  x_{t+1}): (nxt [B, n] those tokens, positions [B, n], last [B] each row's last real entry)."""
  B, n, _ = prefill.hidden.shape
  nxt = jax.lax.dynamic_slice_in_dim(ctx.tokens, 1, n, 1)
  return nxt, jnp.broadcast_to(jnp.arange(n), (B, n)), jnp.clip(ctx.prompt_len - 2, 0, n - 1)


def heads_first(x):
  """Fresh keys or values [B, T, KVH, D] -> the cache layout [B, KVH, T, D] (specjax.cache)."""
  return jnp.swapaxes(x, 1, 2)


class FlatNet(nnx.Module):
  """A drafter's weights as one flat dict of float32 parameters, plus vocab [N] int32, the reduced
  draft vocabulary (target ids) or [0] for the full one."""

  def __init__(self, weights: dict, vocab=None):
    self.p = nnx.Param({k: jnp.asarray(v, jnp.float32) for k, v in weights.items()})
    self.vocab = nnx.Variable(jnp.asarray(np.zeros(0, np.int32) if vocab is None else vocab, jnp.int32))


@dataclasses.dataclass(frozen=True)
class FlatDrafter(Drafter):
  """Base of drafters with FlatNet weights. Subclasses define `shapes()` (name -> shape of every
  weight, from the static fields); the options that size the tree carry BUDGET metadata."""
  # the target's sizes (dims_of): set by for_target / the checkpoint
  dims: tuple = dataclasses.field(default=(), metadata=NOT_OPTION)
  # N most frequent tokens; 0 = the full vocabulary
  draft_vocab: int = dataclasses.field(default=0, metadata=NOT_OPTION)

  def shapes(self) -> dict[str, tuple[int, ...]]:
    raise NotImplementedError

  def module(self):
    return FlatNet(self._zeros(), np.zeros(self.draft_vocab, np.int32))

  def _zeros(self):
    if not self.dims:
      raise ValueError(f"{self.name}: no target sizes; load a checkpoint or build it with for_target or untrained")
    return {k: np.zeros(s, np.float32) for k, s in self.shapes().items()}

  def check_target(self, target):
    super().check_target(target)
    if tuple(self.dims) != dims_of(target.cfg):
      raise ValueError(f"{self.name}: weights for target sizes {tuple(self.dims)} do not fit this target's {dims_of(target.cfg)} "
                       "(hidden, heads, kv_heads, head_dim, ffn, qkv_bias)")
    if self.params is None:
      raise ValueError(f"{self.name}: no weights; load a checkpoint ('{self.name}' or '{self.name}:PATH') or use "
                       f"{type(self).__name__}.untrained")

  def head_weight(self, m):
    """The LM head the draft scores with, float32 [H, N]: the target's, or its draft-vocabulary columns."""
    return (m.target.head_weight(m.drafter.vocab[...]) if self.draft_vocab else m.target.head_weight()).astype(jnp.float32)

  # ---------------------------------------------------------------- construction
  @classmethod
  def for_target(cls, target, **config):
    """The configuration (no weights) for `target`, recording it (`trained_for`)."""
    return cls(dims=dims_of(target.cfg), trained_for=json.dumps(target_record(target), sort_keys=True), **config)

  def with_weights(self, weights: dict, vocab=None):
    """This configuration with float32 `weights` (see shapes) and the draft vocabulary `vocab` [N]."""
    want = self.shapes()
    if {k: tuple(np.shape(v)) for k, v in weights.items()} != {k: tuple(v) for k, v in want.items()}:
      got = {k: tuple(np.shape(v)) for k, v in weights.items()}
      diff = sorted(k for k in set(got) | set(want) if got.get(k) != (tuple(want[k]) if k in want else None))
      raise ValueError(f"{self.name}: weights do not match its configuration at {diff[:4]}")
    if self.draft_vocab and vocab is None:
      vocab = np.arange(self.draft_vocab, dtype=np.int32)
    return dataclasses.replace(self, params=nnx.state(FlatNet(weights, vocab if self.draft_vocab else None)))
