"""The early-exit adapter's training (drafters/early_exit.py decodes): Medusa's machinery on the residual
after the target's first `exit_layer` layers, one head predicting the target's next token there."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.drafters import medusa
from specjax.drafters.early_exit import EarlyExit
from specjax.models.llama import rms_norm
from specjax.train.medusa import MedusaRecipe


class EarlyExitRecipe(MedusaRecipe):
  """The early-exit adapter: one Medusa head of `layers` ResBlocks on the final-normed residual after the
  target's first `exit_layer` layers, predicting the target's next token at the same position, trained
  with soft cross-entropy against the target's top-8 (renormalised over the draft vocabulary). Held-out
  top-1 = how often the draft's token is the target's: the chain's per-token acceptance under greedy
  decoding."""
  full = False        # answer positions only: the adapter reads one position at a time

  @staticmethod
  def capture_for(cfg, c=None) -> tuple:
    if not 1 <= c.exit_layer < cfg.layers:
      raise ValueError(f"early-exit: --exit-layer must be in [1, {cfg.layers - 1}] for this target, got {c.exit_layer}")
    return (c.exit_layer - 1,)

  def __init__(self, target, train, held, c):
    # The adapter's input is the captured residual: Medusa's machinery then runs unchanged on `hidden`.
    train, held = (dataclasses.replace(f, hidden=f.layers[:, 0], layers=None) for f in (train, held))
    super().__init__(target, train, held, dataclasses.replace(c, heads=1))

  def labels(self, feat):
    """[N, 1] the target's own next token at each position (draft-vocabulary index, -1 outside)."""
    return self.index[feat.top_ids[:, :1]]

  def batch(self, units, step):
    idx = self.pos_train[units]
    ids = self.index[self.train.top_ids[idx]]                                   # [b, 8], -1 outside the vocabulary
    p = np.where(ids >= 0, self.train.top_p[idx].astype(np.float32), 0)
    return {"h": jnp.asarray(np.asarray(self.train.hidden[idx], np.float32)), "ids": jnp.asarray(np.maximum(ids, 0)),
            "p": jnp.asarray(p / np.maximum(p.sum(1, keepdims=True), 1e-9)), "lab": jnp.asarray(self.lab_train[idx])}

  def loss(self, p, consts, batch):
    hn = rms_norm(batch["h"], consts["norm_w"], self.eps)
    logits = numerics.dot(medusa.apply(p, hn)[:, 0], consts["head_w"], preferred_element_type=jnp.float32)   # [b, N]
    logp = jax.nn.log_softmax(logits, -1)
    loss = -(jnp.take_along_axis(logp, batch["ids"], -1) * batch["p"]).sum(-1).mean()
    acc = (jnp.argmax(logits, -1) == batch["lab"][:, 0]).mean()
    return loss, acc[None]

  def drafter(self, p, summary):
    c = self.c
    d = EarlyExit(exit_layer=c.exit_layer, layers=c.layers, hidden=self.target.cfg.hidden,
                  draft_vocab=0 if self.vocab is None else len(self.vocab))
    return d.with_weights(p, self.vocab)


RECIPE = EarlyExitRecipe    # what `specjax train --drafter early-exit` runs (loop.RECIPES)
