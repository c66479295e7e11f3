"""What the recipes of drafters trained on whole sequences share (train/clover.py, train/eagle.py): a
batch is a few sequences of full features (the prompt's positions too), gathered on the device, and
held-out evaluation scores the drafter's own dynamic trees against the target's greedy continuation.

A recipe is what `loop.fit` needs from a drafter: `units` to sample batches from, `batch`, `init`,
`loss`, `summarize` and `drafter` (see train/recipe.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax.train.data import Deferred
from specjax.train.recipe import Recipe


def spans(feat) -> np.ndarray:
  """[n, 2] (start, end) of each sequence in concatenated features."""
  cut = np.flatnonzero(np.diff(feat.seq) != 0) + 1
  starts = np.concatenate([[0], cut])
  return np.stack([starts, np.concatenate([cut, [len(feat)]])], 1)


def accepted(tok, parent, truth) -> np.ndarray:
  """tok, parent [n, T] draft trees (node 0 the root), truth [n, K] the target's greedy tokens after
  the root (-1: unknown). Returns [n] accepted candidates under greedy verification."""
  n, T = tok.shape
  ok = np.zeros((n, T), bool)
  depth = np.zeros((n, T), np.int64)
  ok[:, 0] = True
  rows = np.arange(n)
  for j in range(1, T):
    par = parent[:, j]
    live = par >= 0
    pj = np.maximum(par, 0)
    depth[:, j] = depth[rows, pj] + 1
    d = np.minimum(depth[:, j] - 1, truth.shape[1] - 1)
    ok[:, j] = live & ok[rows, pj] & (tok[:, j] == truth[rows, d]) & (truth[rows, d] >= 0)
  return np.where(ok, depth, 0).max(1)


@jax.jit
def _gather(a, idx):
  """a [N, ...], idx [B, L] (-1: padding) -> [B, L, ...] float32, zero at padding."""
  x = jnp.take(a, jnp.maximum(idx, 0), axis=0).astype(jnp.float32)
  return jnp.where((idx >= 0).reshape(idx.shape + (1,) * (x.ndim - 2)), x, 0.0)


class SequenceRecipe(Recipe):
  """Drafters trained on whole sequences (full features: the prompt's positions too), a batch being
  `batch` sequences padded to a multiple of `bucket`: Clover's augmenting block and EAGLE's draft
  layer attend over the prompt and the answer."""
  defaults = dict(batch=4, clip=0.5, b2=0.95)
  clip_by = "value"                 # the public Clover-2 and EAGLE-1 trainers clip gradient values at 0.5
  bucket = 128

  def __init__(self, target, train, held, c):
    super().__init__(target, train, held, c)
    self.consts["embed"] = jnp.asarray(target.model.embed[...], jnp.float32)
    self.spans_train, self.spans_held = spans(train), spans(held)
    self.units = len(self.spans_train)
    if self.units < c.batch:
      raise ValueError(f"only {self.units} training sequences, fewer than a batch of {c.batch}")
    self._eval_fns = {}
    self._on_device = {}

  def rows(self, feat, name: str, rows, L: int) -> jax.Array:
    """[B, L, ...] float32: feature `name` ("hidden" or "layers") of the sequences `rows` ((start,
    end) pairs), zero past each row's end. Gathered on the device from a copy of the feature kept
    there (bfloat16), so a step moves only indices: on an accelerator the host's copying and
    converting of [B, L, H] floats was most of a step."""
    if isinstance(getattr(feat, name), Deferred):     # features on the fly: the step's target forward fills it in
      return getattr(feat, name).rows(feat, name, rows, L)
    key = (id(feat), name)
    if key not in self._on_device:
      self._on_device[key] = jnp.asarray(getattr(feat, name))
    idx = np.full((len(rows), L), -1, np.int32)
    for b, (s, e) in enumerate(rows):
      idx[b, :e - s] = np.arange(s, e)
    return _gather(self._on_device[key], jnp.asarray(idx))

  def padded(self, rows) -> int:
    """The padded length of a batch of (start, end) rows: the longest rounded up to `bucket`, so few shapes compile."""
    return -(-max(e - s for s, e in rows) // self.bucket) * self.bucket

  def embed_fn(self):
    """draft-vocab index -> (target id, float32 embedding), for trees grown in evaluation."""
    vocab = None if self.vocab is None else jnp.asarray(self.vocab)

    def embed(vidx):
      tok = vocab[vidx] if vocab is not None else vidx
      return tok, self.consts["embed"][tok]
    return embed
