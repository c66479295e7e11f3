"""AdaDecode's training (drafters/adadecode.py decodes): the early head is the early-exit adapter, trained
as train/early_exit.py trains it (soft cross-entropy against the target's own final-layer distribution at
the same position: the paper's "predict the final layer's token"), and the confidence threshold is then
calibrated on held-out text.

The threshold (reconstructed; the paper's code is not public): for each candidate threshold, the chain
the drafter would draft is replayed at every held-out answer position from the head's confidences and
correctness at the following positions (the head reads the true context there, which is the drafted one
while every token was right), counting accepted tokens and draft calls; the threshold kept maximises
(1 + accepted) / (1 + draft calls x exit_layer / layers), tokens per unit of target-forward time when a
draft call costs its share of the target's layers and a verify costs one forward. The verify's extra cost
for a wider tree is machine-dependent and not modelled."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.drafters import medusa
from specjax.drafters.adadecode import AdaDecode
from specjax.models.llama import rms_norm
from specjax.train.early_exit import EarlyExitRecipe

THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def replay(conf: np.ndarray, correct: np.ndarray, ahead: np.ndarray, threshold: float, gamma: int):
  """conf, correct [N, G]: the head's top-1 probability and whether its token is the target's, at each
  held-out position and the G - 1 after it; ahead [N, G] whether that position exists. Returns
  (accepted [N], draft calls [N]) of the confidence-gated chain: token j is drafted while tokens 0..j are
  confident, accepted while they are also all correct."""
  live = np.cumprod((conf >= threshold) & ahead, 1).astype(bool)             # drafted
  accepted = np.cumprod(live & correct, 1).sum(1)
  calls = 1 + np.minimum(live.sum(1), gamma - 1)    # a call for the first token, one more per drafted token
  return accepted, calls


def calibrate(conf, correct, ahead, *, gamma: int, cost: float) -> dict:
  """The threshold of THRESHOLDS with the highest (1 + accepted) / (1 + cost x calls), with each one's figures."""
  rows = []
  for t in THRESHOLDS:
    acc, calls = replay(conf, correct, ahead, float(t), gamma)
    rows.append((float(t), 1.0 + float(acc.mean()), float(calls.mean()), (1.0 + acc.mean()) / (1.0 + cost * calls.mean())))
  best = max(rows, key=lambda r: r[3])
  return {"threshold": best[0], "tau": best[1], "draft_calls": best[2],
          "by_threshold": {f"{t:.2f}": {"tau": round(a, 4), "calls": round(c, 4), "gain": round(g, 4)}
                           for t, a, c, g in rows}}


class AdaDecodeRecipe(EarlyExitRecipe):
  """The early-exit adapter's recipe, then the threshold's calibration (see the module docstring)."""

  def __init__(self, target, train, held, c):
    super().__init__(target, train, held, c)
    self._conf_fn = jax.jit(self.confidences)

  def confidences(self, p, consts, h, lab):
    """h [b, H] residual after exit_layer, lab [b] the target's token (draft-vocabulary index) ->
    (top-1 probability [b], top-1 == lab [b])."""
    hn = rms_norm(h, consts["norm_w"], self.eps)
    logits = numerics.dot(medusa.apply(p, hn)[:, 0], consts["head_w"], preferred_element_type=jnp.float32)
    return jnp.max(jax.nn.softmax(logits, -1), -1), jnp.argmax(logits, -1) == lab

  def summarize(self, p):
    out = super().summarize(p)
    gamma = AdaDecode.gamma
    feat, lab = self.held, self.lab_held[:, 0]
    conf, ok = np.zeros(len(feat), np.float32), np.zeros(len(feat), bool)
    for s in range(0, len(feat), 1024):
      idx = np.arange(s, min(s + 1024, len(feat)))
      pad = np.pad(idx, (0, 1024 - len(idx)), mode="edge")
      c, k = self._conf_fn(p, self.consts, jnp.asarray(np.asarray(feat.hidden[pad], np.float32)), jnp.asarray(lab[pad]))
      conf[idx], ok[idx] = np.asarray(c)[:len(idx)], np.asarray(k)[:len(idx)]
    pos = self.ev_held
    ahead = np.stack([feat.valid_ahead(j)[pos] for j in range(gamma)], 1)
    take = np.minimum(pos[:, None] + np.arange(gamma)[None], len(feat) - 1)
    cal = calibrate(conf[take], ok[take] & (lab[take] >= 0), ahead, gamma=gamma,
                    cost=self.c.exit_layer / self.target.cfg.layers)
    out.update(threshold=cal["threshold"], gated_tau=cal["tau"], draft_calls=cal["draft_calls"],
               by_threshold=cal["by_threshold"])
    return out

  def drafter(self, p, summary):
    c = self.c
    d = AdaDecode(exit_layer=c.exit_layer, layers=c.layers, hidden=self.target.cfg.hidden,
                  draft_vocab=0 if self.vocab is None else len(self.vocab), calibrated=summary["threshold"])
    return d.with_weights(p, self.vocab)


RECIPE = AdaDecodeRecipe    # what `specjax train --drafter adadecode` runs (loop.RECIPES)
