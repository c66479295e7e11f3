"""Cerberus's training (drafters/cerberus.py decodes): Medusa's recipe (single answer positions of the last
hidden state, cross-entropy per head against the target's top-1 k+1 places ahead, weights 0.8^k) with the
sequential heads, plus the entry gate trained beside them.

The gate (reconstructed: the paper gates on the prediction's entropy and publishes no trainer): logistic
regression of "head 0's top-1 is the target's next token" (a draft this step would be accepted at all) on the
normed hidden state and the target's top-8 entropy there, binary cross-entropy added to the heads' loss. Its
label follows the heads as they train (computed from their current predictions, no gradient through it), so
at the end it describes the heads that ship. Held-out evaluation adds the gate's accuracy, the share of steps
it drafts at the default threshold (cerberus.GATE) and the exact tau of the gated tree (a gated-off step
commits one token).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specjax.drafters import cerberus
from specjax.engine import tree as tree_lib
from specjax.models.llama import rms_norm
from specjax.train import medusa as medusa_train
from specjax.train.medusa import MedusaRecipe


def loss_fn(p, norm_w, head_w, h, ent, lab, *, eps: float):
  """Medusa's head loss over Cerberus's heads + the gate's binary cross-entropy. h [b, H], ent [b] top-8
  entropy, lab [b, K] (-1: no label). Returns (loss, [top-1 accuracy per head..., gate accuracy])."""
  logits = medusa_train.head_logits(p, norm_w, head_w, h, eps=eps, apply=cerberus.apply)
  heads, acc = medusa_train.loss_fn(p, norm_w, head_w, h, lab, eps=eps, logits=logits)
  has = lab[:, 0] >= 0
  y = jax.lax.stop_gradient(jnp.argmax(logits[:, 0], -1) == lab[:, 0]).astype(jnp.float32)
  z = cerberus.gate_logit(p, rms_norm(h.astype(jnp.float32), norm_w, eps), ent)
  bce = jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
  n = jnp.maximum(has.sum(), 1)
  gate_acc = jnp.sum(has & ((z >= 0) == (y > 0))) / n
  return heads + jnp.sum(jnp.where(has, bce, 0.0)) / n, jnp.concatenate([acc, gate_acc[None]])


class CerberusRecipe(MedusaRecipe):
  """Medusa's recipe with Cerberus's heads and gate; a batch adds the top-8 entropy at each position."""

  def batch(self, units, step):
    idx = self.pos_train[units]
    return {**super().batch(units, step), "ent": self._entropy(self.train, idx)}

  @staticmethod
  def _entropy(feat, idx):
    return cerberus.top_entropy(jnp.asarray(np.asarray(feat.top_p[idx], np.float32)))

  def init(self):
    H, K, L = self.target.cfg.hidden, self.c.heads, self.c.layers
    return {"w": jnp.zeros((K, L, 2 * H, H)), "b": jnp.zeros((K, L, H)), "gate_w": jnp.zeros(H),
            "gate_ab": jnp.zeros(2)}

  def loss(self, p, consts, batch):
    return loss_fn(p, consts["norm_w"], consts["head_w"], batch["h"], batch["ent"], batch["lab"], eps=self.eps)

  def ranks(self, p, consts, h, lab):
    return medusa_train.ranks(p, consts["norm_w"], consts["head_w"], h, lab, eps=self.eps, kmax=medusa_train.KMAX,
                              apply=cerberus.apply)

  def summarize(self, p):
    out = super().summarize(p)
    held = medusa_train.evaluate(self._rank_fn, p, self.consts, self.held, self.lab_held, self.ev_held)
    hn = rms_norm(jnp.asarray(np.asarray(self.held.hidden[self.ev_held], np.float32)), self.consts["norm_w"], self.eps)
    go = np.asarray(jax.nn.sigmoid(cerberus.gate_logit(p, hn, self._entropy(self.held, self.ev_held))) >= cerberus.GATE)
    first = held[:, 0] == 0                            # head 0's top-1 is the target's: drafting pays this step
    acc_len = tree_lib.accepted_lengths(held, tree_lib.grow(np.asarray(out["table"]), self.c.nodes))
    out["gate"] = {"accuracy": float((go == first).mean()), "drafted": float(go.mean()),
                   "tau_gated": 1.0 + float(np.where(go, acc_len, 0).mean()), "tau_always": out["tau"]}
    return out

  DRAFTER, HEADS = cerberus.Cerberus, cerberus.CerberusHeads

  def drafter(self, p, summary):
    # What tree_budget="auto" sets the gate's threshold by (Cerberus.gated): head 0's held-out top-1.
    return dataclasses.replace(super().drafter(p, summary), hit_rate=round(float(summary["top1"][0]), 4))


RECIPE = CerberusRecipe     # what `specjax train --drafter cerberus` runs (loop.RECIPES)
