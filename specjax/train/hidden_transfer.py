"""Hidden Transfer's training (drafters/hidden_transfer.py decodes): only the k linear transfers train; the
target is frozen. Whole sequences (full features with the residual entering layer l captured): the real
residuals run through the target's layers [l, L) once, without gradient, giving each layer's context keys
and values; at every position t the transfers make k pseudo states (positions t+1 .. t+k), which run
through the same layers attending to the context up to t and, causally, to each other (exactly what the
decoder's draft call does), and the final norm + LM head score them. Loss: cross-entropy of pseudo state i
against the target's own next token after position t+1+i (the token i+2 places ahead), weighted 0.8^i as
Medusa weights its heads, at answer positions and the first step's (data.FIRST_DRAFT_POS); the paper's loss
is the LM loss of the pseudo states' predictions (the weighting and the self-distilled labels are ours).

Held-out evaluation: each transfer's label rank (top-10) at answer positions, the acceptance table the
static tree is grown from and the exact tau of that tree (train/medusa.summarize). `--exit-layer K` is
the transfer layer l (the pseudo states enter after the first K layers), `--heads` the number of transfers k.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.drafters.flat import heads_first, run_layer
from specjax.drafters.hidden_transfer import HiddenTransfer
from specjax.models.llama import LAYER_WEIGHTS, causal_mask, rms_norm
from specjax.train import data
from specjax.train import medusa as medusa_train
from specjax.train.sequence import SequenceRecipe

DECAY = 0.8


class HiddenTransferRecipe(SequenceRecipe):
  """k transfers trained through the frozen upper layers (see the module docstring)."""

  @staticmethod
  def capture_for(cfg, c=None) -> tuple:
    if not 1 <= c.exit_layer < cfg.layers:
      raise ValueError(f"hidden-transfer: --exit-layer (the transfer layer) must be in [1, {cfg.layers - 1}] for this "
                       f"target, got {c.exit_layer}")
    return (c.exit_layer - 1,)

  def __init__(self, target, train, held, c):
    super().__init__(target, train, held, c)
    model = target.model
    self.cfg, self.eps, self.l = target.cfg, target.cfg.norm_eps, c.exit_layer
    self.consts["upper"] = {n: jnp.asarray(model.stacked(n)[self.l:], jnp.float32)
                            for n in LAYER_WEIGHTS if hasattr(model, n)}
    self._rank_fn = jax.jit(self.ranks)

  # ---------------------------------------------------------------- data
  def _arrays(self, feat, rows):
    """(x [B, L, H] residuals entering layer l, valid [B, L], answer [B, L], lab [B, L] the target's token after
    each position as a draft-vocabulary index, -1 outside it or past the row)."""
    L = self.padded(rows)
    x = self.rows(feat, "layers", rows, L)[:, :, 0]
    valid, answer, lab = np.zeros((len(rows), L), bool), np.zeros((len(rows), L), bool), np.full((len(rows), L), -1, np.int32)
    for b, (s, e) in enumerate(rows):
      valid[b, :e - s] = True
      answer[b, :e - s] = feat.pos[s:e] >= data.FIRST_DRAFT_POS
      lab[b, :e - s] = self.index[feat.top_ids[s:e, 0]]
    return x, jnp.asarray(valid), jnp.asarray(answer), jnp.asarray(lab)

  def batch(self, units, step):
    x, valid, answer, lab = self._arrays(self.train, self.spans_train[units])
    return {"x": x, "valid": valid, "answer": answer, "lab": lab}

  def init(self):
    H, K = self.target.cfg.hidden, self.c.heads
    return {"w": jnp.broadcast_to(jnp.eye(H, dtype=jnp.float32), (K, H, H))}

  # ---------------------------------------------------------------- the forward
  def logits(self, p, consts, x, valid):
    """x [B, L, H], valid [B, L] -> [B, L, K, N] the k pseudo states' logits at every source position."""
    B, L, H = x.shape
    K = p["w"].shape[0]
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    n = next(iter(consts["upper"].values())).shape[0]
    layer = lambda j: {name: w[j] for name, w in consts["upper"].items()}
    kvs, y = [], x
    for j in range(n):                       # the real context's keys and values at layers [l, L)
      y, k, v = run_layer(self.cfg, layer(j), y, pos, causal_mask(B, L) & valid[:, None, :])
      kvs.append(jax.lax.stop_gradient((heads_first(k), heads_first(v))))
    src = jnp.repeat(jnp.arange(L), K)                                              # [L*K] source position of each row
    step = jnp.tile(jnp.arange(K), L)
    ppos = jnp.broadcast_to(src + 1 + step, (B, L * K))
    mask = jnp.broadcast_to((src[:, None] == src[None, :]) & (step[None, :] <= step[:, None]), (B, L * K, L * K))
    live = (jnp.arange(L)[None, None, :] <= src[None, :, None]) & valid[:, None, :]   # [B, L*K, L]
    y = numerics.einsum("blh,khg->blkg", x, p["w"]).reshape(B, L * K, H)
    for j in range(n):
      y, _, _ = run_layer(self.cfg, layer(j), y, ppos, mask, kv=kvs[j], live=live)
    out = numerics.dot(rms_norm(y, consts["norm_w"], self.eps), consts["head_w"], preferred_element_type=jnp.float32)
    return out.reshape(B, L, K, -1)

  @staticmethod
  def targets(lab, K: int):
    """lab [B, L] -> [B, L, K]: pseudo state i at source t predicts the token after position t+1+i."""
    pad = jnp.pad(lab, ((0, 0), (0, K + 1)), constant_values=-1)
    return jnp.stack([pad[:, 1 + i:1 + i + lab.shape[1]] for i in range(K)], -1)

  def loss(self, p, consts, batch):
    K = p["w"].shape[0]
    logits = self.logits(p, consts, batch["x"], batch["valid"])
    lab = self.targets(batch["lab"], K)
    ok = (lab >= 0) & batch["answer"][..., None]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), jnp.maximum(lab, 0)[..., None], -1)[..., 0]
    per = jnp.sum(jnp.where(ok, nll, 0.0), (0, 1)) / jnp.maximum(ok.sum((0, 1)), 1)                  # [K]
    acc = jnp.sum(ok & (jnp.argmax(logits, -1) == lab), (0, 1)) / jnp.maximum(ok.sum((0, 1)), 1)
    return jnp.sum(per * DECAY ** jnp.arange(K)), acc

  def ranks(self, p, consts, x, valid, lab):
    """[B, L, K] each label's rank among its pseudo state's top KMAX (KMAX: absent or no label)."""
    K = p["w"].shape[0]
    top = jax.lax.top_k(self.logits(p, consts, x, valid), medusa_train.KMAX)[1]
    lab = self.targets(lab, K)
    hit = top == lab[..., None]
    return jnp.where(jnp.any(hit, -1) & (lab >= 0), jnp.argmax(hit, -1), medusa_train.KMAX)

  # ---------------------------------------------------------------- evaluation and the drafter
  def _ranks_of(self, feat, spans, p) -> np.ndarray:
    """[n, K] label ranks at answer positions of the first sequences, up to eval_positions of them."""
    out, n = [], 0
    for s in range(0, len(spans), self.c.batch):
      rows = spans[s:s + self.c.batch]
      x, valid, answer, lab = self._arrays(feat, rows)
      r = np.asarray(self._rank_fn(p, self.consts, x, valid, lab))
      out.append(r[np.asarray(answer)])
      n += len(out[-1])
      if n >= self.c.eval_positions:
        break
    return np.concatenate(out)[:self.c.eval_positions]

  def summarize(self, p):
    return medusa_train.summarize(self._ranks_of(self.held, self.spans_held, p),
                                  self._ranks_of(self.train, self.spans_train, p), self.c.nodes)

  def drafter(self, p, summary):
    c = self.c
    d = HiddenTransfer(transfer_layer=c.exit_layer, steps=c.heads, hidden=self.target.cfg.hidden,
                       draft_vocab=0 if self.vocab is None else len(self.vocab), nodes=c.nodes,
                       accuracy=tuple(tuple(round(float(x), 4) for x in row) for row in summary["table"]))
    return d.with_weights(np.asarray(p["w"], np.float32), self.vocab)


RECIPE = HiddenTransferRecipe    # what `specjax train --drafter hidden-transfer` runs (loop.RECIPES)
