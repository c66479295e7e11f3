"""ParallelSpec's training (drafters/parallelspec.py decodes): group-wise parallel training over whole
sequences, and the recipe `loop.fit` runs (a batch is a few whole sequences, as EAGLE's).

One layer call a batch (parallelspec.groups): the real entries teacher-forced over the whole sequence
(causal, as EAGLE's) and, after `groups` random answer anchors a sequence, a group of k-1 [MASK] entries
each; a group's masks see the prefix up to their anchor and their own group's masks (the paper's mask
layout, which keeps the groups of one sequence apart so that many train in one forward).
Loss (reconstructed: the paper distils from the target without giving weights): EAGLE-1's loss at every
output, SmoothL1 against the target's next normed feature + 0.1 x soft cross-entropy against the target's
distribution there (as EAGLE-1's recipe: by default the full softmax of the frozen head on that feature), for the real entries at every answer entry (depth 1) and for mask j at its anchor t
(feature f_{t+1+j}, distribution at t+1+j: depth j+1), each depth's mean weighted 0.8^j as Medusa's heads.
EAGLE-1's input noise on the real features, as train/eagle.py. On EAGLE-3's host (`own_head`): the fused
captured layers as the feature, no noise, and EAGLE-3's loss at every output instead (soft cross-entropy of its
own head against the target's draft-vocabulary softmax, as train/eagle.py `ttt_loss`), the same depth weights.
Held-out evaluation: per-depth label ranks
at random answer anchors, the acceptance table the static tree is grown from, and the tree's exact tau.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax.drafters import eagle, parallelspec
from specjax.models.llama import rms_norm
from specjax.train import medusa as medusa_train
from specjax.train.eagle import EagleRecipe
from specjax.train.recipe import soft_ce, soft_targets, top8_ce


def loss_fn(cfg, p, consts, batch, *, decay: float = 0.8, mask_weight: float = 1.0, token_weight: float = 0.1,
            targets: str = "full", three: bool = False):
  """batch: h [B, L, H] last residuals, nxt [B, L], noise [B, L, H], valid [B, L], top_idx, top_p [B, L, 8]
  (the target's distribution at t+1, as EAGLE's recipe), sel [B, P] anchors (entries t with t+1 an answer
  position), sel_ok [B, P]; with three (EAGLE-3's host) layers [B, L, 3, H] and no noise. targets: "full"
  (the soft targets recomputed from the wanted feature, `recipe.soft_targets`) or "top8" (the stored top_idx /
  top_p). EAGLE-1's host: SmoothL1 + token_weight x soft CE at each output; EAGLE-3's: soft CE over the draft
  vocabulary (renormalised, scored where the target's top-1 lies in it), as its training-time test.
  Depth j+1 (mask j) weighs mask_weight x decay^j. Returns (loss, top-1 accuracy per depth [k])."""
  f = rms_norm(batch["h"], consts["norm_w"], cfg.norm_eps) if "h" in batch else None   # (EAGLE-3's top8: no h)
  f_in = eagle.fuse(cfg, p, batch["layers"]) if three else f + batch["noise"]
  g, gm = parallelspec.groups(cfg, p, consts["embed"], f_in, batch["nxt"], batch["sel"])
  B, L, H = g.shape
  M = gm.shape[2]
  shift = lambda x, i, fill: jnp.pad(x[:, i:], ((0, 0), (0, i)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)
  at = lambda x: jnp.take_along_axis(x, batch["sel"].reshape((B, -1) + (1,) * (x.ndim - 2)), 1)
  want = shift(f if f is not None else g, 1, 0.0)                               # f_{t+1} (unused without h)
  probs = soft_targets(consts, want, renormalise=three) if targets == "full" else None
  lab = batch["top_idx"][..., 0]
  scored = batch["valid"] & (lab >= 0) if three and targets == "full" else batch["valid"]

  def term(out, want, probs, top_idx, top_p, scored, valid):
    logits = eagle.head_logits(cfg, p, out, consts["head_w"])
    logp = jax.nn.log_softmax(logits, -1)
    ce = soft_ce(logp, probs) if targets == "full" else top8_ce(logp, top_idx, top_p)
    if three:
      per = ce
    else:
      d = jnp.abs(out - want)
      per = jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5), -1) + token_weight * ce
    return (jnp.sum(jnp.where(scored, per, 0.0)) / jnp.maximum(scored.sum(), 1),
            jnp.sum(valid & (jnp.argmax(logits, -1) == top_idx[..., 0])) / jnp.maximum(valid.sum(), 1))

  loss, acc = term(g, want, probs, batch["top_idx"], batch["top_p"], scored, batch["valid"])
  accs = [acc]
  for j in range(1, M + 1):       # mask j at anchor t: the entry t+j's targets (feature f_{t+1+j}, tokens at t+1+j)
    ok = batch["sel_ok"] & at(shift(batch["valid"], j, False))
    lj, aj = term(gm[:, :, j - 1], at(shift(want, j, 0.0)), None if probs is None else at(shift(probs, j, 0.0)),
                  at(shift(batch["top_idx"], j, -1)), at(shift(batch["top_p"], j, 0.0)),
                  batch["sel_ok"] & at(shift(scored, j, False)), ok)
    loss = loss + mask_weight * decay ** j * lj
    accs.append(aj)
  return loss, jnp.stack(accs)


class ParallelSpecRecipe(EagleRecipe):
  """The host's batches (EAGLE-1's: whole sequences, noised features; with `own_head` EAGLE-3's: the
  captured layers, its own head) plus `groups` mask anchors a sequence; `heads` is k, the tokens drafted in
  parallel. (`layers` does not apply: one layer.)"""
  groups = 64                       # mask groups (anchors) per training sequence
  EVAL_POSITIONS = 64               # anchors per held-out sequence
  full = True

  @classmethod
  def defaults_for(cls, drafter: str) -> dict:
    """EAGLE-3's host by default (measured: BENCHMARKS, issue 24); EAGLE-1's optimiser settings either way."""
    return {**super().defaults_for(drafter), "own_head": True}

  @staticmethod
  def host3(c) -> bool:
    return bool(c is not None and c.own_head)

  def __init__(self, target, train, held, c):
    super().__init__(target, train, held, c)
    if c.heads < 2:
      raise ValueError(f"parallelspec drafts heads >= 2 tokens in parallel (one real entry, heads-1 masks); got {c.heads}")

  def init(self):
    head = np.asarray(self.consts["head_w"]) if self.three else None
    w = parallelspec.initial(self.target, self.c.heads, seed=self.c.seed, three=self.three, head=head)
    return {k: jnp.asarray(v) for k, v in w.items()}

  def _anchors(self, feat, rows, rng, P):
    """sel, sel_ok [B, P]: P random entries t of each row whose t+1 is an answer position."""
    sel, ok = np.zeros((len(rows), P), np.int32), np.zeros((len(rows), P), bool)
    for b, (s, e) in enumerate(rows):
      cand = np.flatnonzero(feat.pos[s + 1:e] >= 0)                   # entry t: t+1 in the answer
      pick = np.sort(rng.choice(cand, min(P, len(cand)), replace=False)) if len(cand) else np.zeros(0, int)
      sel[b, :len(pick)], ok[b, :len(pick)] = pick, True
    return {"sel": jnp.asarray(sel), "sel_ok": jnp.asarray(ok)}

  def batch(self, units, step):
    out = super().batch(units, step)
    rows = [tuple(self.spans_train[u]) for u in units]
    return {**out, **self._anchors(self.train, rows, np.random.default_rng([self.c.seed, 7, step]), self.groups)}

  def loss(self, p, consts, batch):
    return loss_fn(self.target.cfg, p, consts, batch, targets=self.c.targets, three=self.three)

  def _eval_fn(self):
    """Jitted once per run: (p, one sequence's arrays with anchors) -> label ranks [P, k] (KMAX: absent)."""
    if not self._eval_fns:
      consts, cfg, kmax = self.consts, self.target.cfg, medusa_train.KMAX

      def f(p, batch):
        g, gm = parallelspec.groups(cfg, p, consts["embed"], self.features(p, batch), batch["nxt"], batch["sel"])
        outs = jnp.concatenate([jnp.take_along_axis(g, batch["sel"][..., None], 1)[:, :, None], gm], 2)[0]  # [P, k, H]
        return jax.lax.top_k(eagle.head_logits(cfg, p, outs, consts["head_w"]), kmax)[1]
      self._eval_fns["f"] = jax.jit(f)
    return self._eval_fns["f"]

  def _ranks(self, p, feat, spans, rng) -> np.ndarray:
    """[n, k] rank of the target's greedy token at depths 1..k among each depth's top-KMAX at random anchors."""
    K, P, kmax = self.c.heads, self.EVAL_POSITIONS, medusa_train.KMAX
    L = self.padded(spans)
    out = []
    for s, e in spans:
      batch = {**self._arrays(feat, [(s, e)], L), **self._anchors(feat, [(s, e)], rng, P)}
      m = int(np.asarray(batch["sel_ok"][0]).sum())
      if m == 0:
        continue
      t = np.asarray(batch["sel"][0, :m])
      at = t[:, None] + 1 + np.arange(K)[None]                             # the positions whose top-1 each depth drafts
      ok = (at < e - s) & (feat.pos[s + np.minimum(at, e - s - 1)] >= 0)
      lab = np.where(ok, self.index[feat.top_ids[s + np.minimum(at, e - s - 1), 0]], -1)
      top = np.asarray(self._eval_fn()(p, batch))[:m]     # [m, k, kmax]
      hit = (top == lab[..., None]) & (lab[..., None] >= 0)
      out.append(np.where(hit.any(-1), hit.argmax(-1), kmax))
    return np.concatenate(out) if out else np.zeros((0, K), np.int64)

  def summarize(self, p):
    """Held-out per-depth top-1/top-5, the acceptance table (training anchors) and the static tree's exact tau."""
    n_seq = max(1, self.c.eval_positions // self.EVAL_POSITIONS)
    held = self._ranks(p, self.held, self.spans_held[:n_seq], np.random.default_rng([self.c.seed, 11]))
    train = self._ranks(p, self.train, self.spans_train[:n_seq], np.random.default_rng([self.c.seed, 12]))
    return medusa_train.summarize(held, train, self.c.nodes)

  def drafter(self, p, summary):
    host = dict(fuse=eagle.fuse_layers(self.target.cfg.layers), own_head=int(p["head"].shape[1])) if self.three else dict(fuse=())
    d = parallelspec.ParallelSpec.for_target(
        self.target, depth=self.c.heads, draft_vocab=0 if self.vocab is None else len(self.vocab), **host,
        accuracy=tuple(tuple(round(float(x), 4) for x in row) for row in summary["table"]))
    return d.with_weights({k: np.asarray(v, np.float32) for k, v in p.items()}, self.vocab)


RECIPE = ParallelSpecRecipe     # what `specjax train --drafter parallelspec` runs (loop.RECIPES)
