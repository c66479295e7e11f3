"""What every drafter's training recipe shares: the interface `loop.fit` calls, the target's frozen
pieces over the reduced draft vocabulary, and the soft targets the losses score against."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from specjax import numerics
from specjax.train.data import draft_vocab


class Recipe:
  """What the loop needs from a drafter: `units` to sample batches from, `batch(units, step)`, `init()`,
  `loss(p, consts, batch)`, `summarize(p)` (held-out accuracies and the exact tau of the tree the drafter
  will use) and `drafter(p, summary)`. c: a loop.TrainConfig. Subclasses set `defaults`, the TrainConfig
  fields left None that they fill (per drafter: `defaults_for`); clip_by: "norm" or "value"; full:
  features of the prompts' positions too."""
  clip_by = "norm"
  full = True
  defaults: dict = {}

  @classmethod
  def defaults_for(cls, drafter: str) -> dict:
    """The TrainConfig defaults of `drafter` (a name this recipe trains)."""
    return {**dict(heads=4, weight_decay=0.0, clip_by=cls.clip_by, own_head=False), **cls.defaults}

  @staticmethod
  def capture_for(cfg, c=None) -> tuple:
    """Target layers whose residuals the features must keep (none: the last hidden state only)."""
    return ()

  def __init__(self, target, train, held, c):
    if c.targets not in ("full", "top8"):
      raise ValueError(f"targets must be 'full' or 'top8', got {c.targets!r}")
    if c.own_head and c.drafter not in ("eagle3", "parallelspec"):
      raise ValueError(f"own_head: only eagle3 and parallelspec (on EAGLE-3's host) train their own head, not {c.drafter}")
    self.c, self.target, self.train, self.held = c, target, train, held
    model = target.model
    self.vocab, self.coverage, self.index = draft_vocab(train, target.cfg.vocab, c.draft_vocab)
    self.consts = dict(norm_w=model.final_norm[...],
                       head_w=jnp.asarray(model.head_weight(None if self.vocab is None else jnp.asarray(self.vocab)),
                                          jnp.float32))

  def add_full_head(self):
    """Keeps the target's head over the whole vocabulary (and the draft vocabulary's ids), for soft
    targets over the full softmax (`soft_targets(..., renormalise=False)`)."""
    if self.vocab is not None:
      self.consts.update(head_all=jnp.asarray(self.target.model.head_weight(None), jnp.float32),
                         vocab=jnp.asarray(self.vocab))


def soft_targets(consts, f, *, renormalise: bool):
  """The target's next-token distribution at temperature 1 over the draft vocabulary [..., N] float32,
  recomputed with its frozen head from f [..., H], its NORMED last hidden state at the position that
  predicts (the stored hidden state, bfloat16, normed: the public trainers recompute theirs the same way
  from stored bf16/fp16 features). renormalise False: the full-vocabulary softmax read at the draft
  vocabulary's tokens (EAGLE-1, Clover-2; they sum to the mass the draft vocabulary covers; with
  `add_full_head` for a reduced vocabulary); True: the softmax of the draft vocabulary's logits alone (EAGLE-3)."""
  if renormalise or "head_all" not in consts:
    return jax.nn.softmax(numerics.dot(f, consts["head_w"], preferred_element_type=jnp.float32), -1)
  z = numerics.dot(f, consts["head_all"], preferred_element_type=jnp.float32)                 # [..., V]
  return jnp.exp(jnp.take(z, consts["vocab"], axis=-1) - jax.nn.logsumexp(z, -1, keepdims=True))


def soft_ce(logp, p):
  """Soft cross-entropy [...] of log-probabilities logp [..., N] against target probabilities p [..., N]."""
  return -jnp.sum(p * logp, -1)


def top8_ce(logp, top_idx, top_p):
  """Soft cross-entropy [...] against the stored top-8: top_idx [..., 8] draft-vocabulary indices (-1:
  outside it or absent), top_p [..., 8] their probabilities (not renormalised; the tail dropped)."""
  return -jnp.sum(jnp.where(top_idx >= 0, top_p * jnp.take_along_axis(logp, jnp.maximum(top_idx, 0), -1), 0.0), -1)
