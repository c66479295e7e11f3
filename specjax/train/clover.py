"""Clover's and Clover-2's training (drafters/clover.py decodes): the augmenting block and the heads
teacher-forced over whole sequences, their losses, and the recipe `loop.fit` runs (a batch is a few whole
sequences; the heads' losses are taken at random answer positions; held-out evaluation grows the drafter's
own tree and measures its exact expected acceptance length).

Clover-2 as the public trainer (XiaoBin1992/clover `clover/train/main_clover2.py`; docs/PUBLIC_TRAINERS.md):
per head (10 SmoothL1 + soft cross-entropy) x 0.7^i, the soft targets the target's full-vocabulary
softmax at temperature 1, recomputed in the loss with the frozen head from the stored hidden state;
AdamW betas (0.9, 0.95), weight decay 0.01, gradient values clipped at 0.5, lr 1e-3. The public
configuration, 2 augmenting layers and 5 heads, is `layers=2, heads=5` (`--layers 2 --heads 5`); the
default stays 1 and 4 until measured.

Deviations from the public Clover-2 trainer (the drafter's own are listed in drafters/clover.py):
- The heads' losses are taken at 128 random positions a sequence (`CloverRecipe.positions`), drawn from the
  answer's and the first step's (data.FIRST_DRAFT_POS), where the public loss covers every answer position;
  each head's sum is divided by its count, not by count + 1.
- The draft vocabulary: the 4096 tokens the target most often predicts (data.draft_vocab), where the
  public heads score the full vocabulary; the full-softmax targets are read at its tokens only (their
  tail outside it is lost); `--draft-vocab 0` gives the public full vocabulary.
- The augmenting block's gate norms start from the target's final norm (the public ones at ones).
- The optimiser schedule: 100 warm-up steps then cosine decay to 5% (loop.py), where the public run
  warms up over 8000 steps and then stays nearly constant.
- Training runs in float32 (the public in bf16), on the target's greedy answers to first turns
  (prompt's last 256 tokens, answer up to 256; data.py) for a few thousand steps, where the public run
  trains 21 epochs on ShareGPT's own multi-turn answers of up to 2048 tokens.
- `targets="top8"` restores the earlier targets (the stored top-8 probabilities, not renormalised): for
  comparison only. Clover-1 (no public trainer) trains on the target's top-1 (hard labels) either way."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.drafters import clover, flat
from specjax.models.llama import rms_norm
from specjax.train import data
from specjax.train.recipe import soft_ce, soft_targets, top8_ce
from specjax.train.sequence import SequenceRecipe, accepted


def sequence_features(heads: clover.Heads, p, embed_w, h, nxt, length):
  """Teacher-forced augmenting block over whole sequences. h [B, L, H] target last residuals (prompt
  and answer), nxt [B, L] the token after each position, length [B]. Returns (u [B, L, H] normed
  features, k, v [B, KVH, L, D] the last augmenting layer's keys/values)."""
  cfg = heads.cfg
  B, L, _ = h.shape
  x = heads.merge(p, h, embed_w[nxt])
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  u, k, v = clover.augment(cfg, p, x, pos, jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L)))
  return rms_norm(u, p["aug_norm"], cfg.norm_eps), flat.heads_first(k[-1]), flat.heads_first(v[-1])


def head_outputs(heads: clover.Heads, p, embed_w, u, k, v, sel, ys):
  """Head outputs along the TRUE continuation (teacher forcing). u [B, L, H], k, v [B, KVH, L, D]
  (see sequence_features); sel [B, P] positions t; ys [B, P, K] tokens x_{t+1} .. x_{t+K}.
  Returns [B, P, K, H]: head i's output at t (it predicts x_{t+2+i})."""
  us = jnp.take_along_axis(u, sel[..., None], 1)                                  # [B, P, H]
  ctx = (k, v, sel + 1, sel)
  e = embed_w[ys]                                                                 # [B, P, K, H]
  outs = []
  if heads.version == 2:
    out, s = rms_norm(numerics.dot(us, p["w0"]) + p["b0"], p["head_norm"], heads.cfg.norm_eps), us
    outs.append(out)
    for i in range(1, ys.shape[2]):
      out, s = heads.step(p, s, e[:, :, i], ctx)
      outs.append(out)
  else:
    s = us
    for i in range(ys.shape[2]):
      out, s = heads.step(p, s, e[:, :, i], ctx)
      outs.append(out)
  return jnp.stack(outs, 2)


def loss_fn(heads: clover.Heads, p, consts, batch, *, targets: str = "full"):
  """Clover-2: per head i, (10 SmoothL1(out_i, normed target state at t+1+i) + soft cross-entropy
  against the target's distribution there) x 0.7^i; targets "full": the full-vocabulary softmax of the
  frozen head on that state (`soft_targets`), "top8": the stored top-8. Clover-1: cross-entropy against the
  target's top-1 x 0.8^i (Medusa's weighting, as the Clover paper trains its heads).
  batch: h [B, L, H], nxt [B, L], length [B], sel [B, P], ys [B, P, K], valid [B, P, K],
  tgt [B, P, K] positions t+1+i, top_idx [B, P, K, 8] draft-vocab indices (-1 absent), top_p.
  Returns (loss, top-1 accuracy per head [K])."""
  cfg = heads.cfg
  u, k, v = sequence_features(heads, p, consts["embed"], batch["h"], batch["nxt"], batch["length"])
  out = head_outputs(heads, p, consts["embed"], u, k, v, batch["sel"], batch["ys"])          # [B, P, K, H]
  logits = numerics.dot(out, consts["head_w"], preferred_element_type=jnp.float32)               # [B, P, K, N]
  logp = jax.nn.log_softmax(logits, -1)
  valid = batch["valid"]
  cnt = jnp.maximum(valid.sum((0, 1)), 1)
  top_idx, top_p = batch["top_idx"], batch["top_p"]
  K = valid.shape[2]
  if heads.version == 2:
    want = jnp.take_along_axis(batch["h"], batch["tgt"].reshape(batch["tgt"].shape[0], -1)[..., None], 1)
    want = rms_norm(want.reshape(out.shape), consts["norm_w"], cfg.norm_eps)
    d = jnp.abs(out - want)
    sl1 = jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5), -1)
    if targets == "full":
      ce = soft_ce(logp, soft_targets(consts, want, renormalise=False))
    else:
      ce = top8_ce(logp, top_idx, top_p)
    per = jnp.sum(jnp.where(valid, 10.0 * sl1 + ce, 0.0), (0, 1)) / cnt
    decay = 0.7
  else:
    lab = top_idx[..., 0]
    ok = valid & (lab >= 0)
    nll = -jnp.take_along_axis(logp, jnp.maximum(lab, 0)[..., None], -1)[..., 0]
    per = jnp.sum(jnp.where(ok, nll, 0.0), (0, 1)) / jnp.maximum(ok.sum((0, 1)), 1)
    decay = 0.8
  loss = jnp.sum(per * decay ** jnp.arange(K))
  acc = jnp.sum(valid & (jnp.argmax(logits, -1) == top_idx[..., 0]), (0, 1)) / cnt
  return loss, acc


class CloverRecipe(SequenceRecipe):
  """Clover and Clover-2: the heads' losses are taken at `positions` random answer positions a sequence."""
  positions = 128

  @classmethod
  def defaults_for(cls, drafter: str) -> dict:
    """Clover-2: weight decay 0.01 (torch AdamW's default, which the public trainer keeps)."""
    d = super().defaults_for(drafter)
    return {**d, "weight_decay": 0.01} if drafter == "clover2" else d

  def __init__(self, target, train, held, c):
    super().__init__(target, train, held, c)
    self.version = 1 if c.drafter == "clover" else 2
    self.heads = clover.Heads(self.version, target.cfg)
    if self.version == 2 and c.targets == "full":
      self.add_full_head()

  def init(self):
    w = clover.initial(self.target, version=self.version, aug_layers=self.c.layers, seed=self.c.seed)
    return {k: jnp.asarray(v) for k, v in w.items()}

  def _arrays(self, feat, rows, rng, P, length=None):
    """Padded batch arrays for sequences `rows` ((start, end) pairs), P head positions each, padded
    to `length` (default: the longest row rounded up to `bucket`, so few shapes are compiled)."""
    K = self.c.heads
    L = length or self.padded(rows)
    B, H = len(rows), feat.hidden.shape[1]
    out = dict(nxt=np.zeros((B, L), np.int32), length=np.zeros(B, np.int32),
               sel=np.zeros((B, P), np.int32), ys=np.zeros((B, P, K), np.int32), valid=np.zeros((B, P, K), bool),
               tgt=np.zeros((B, P, K), np.int32), top_idx=np.full((B, P, K, 8), -1, np.int32),
               top_p=np.zeros((B, P, K, 8), np.float32))
    for b, (s, e) in enumerate(rows):
      n = e - s
      out["nxt"][b, :n - 1] = feat.token[s + 1:e]
      out["length"][b] = n
      cand = np.flatnonzero((feat.pos[s:e] >= data.FIRST_DRAFT_POS) & (np.arange(n) + 1 < n))
      pick = np.sort(rng.choice(cand, min(P, len(cand)), replace=False)) if len(cand) else np.zeros(0, int)
      t = np.arange(K)[None, :] + pick[:, None] + 1                               # [p, K] positions t+1+i
      ok = t < n
      tc = np.minimum(t, n - 1)
      m = len(pick)
      out["sel"][b, :m] = pick
      out["ys"][b, :m] = np.where(ok, feat.token[s + tc], 0)
      out["valid"][b, :m] = ok
      out["tgt"][b, :m] = tc
      ids = feat.top_ids[s + tc]
      out["top_idx"][b, :m] = np.where(ok[..., None], self.index[ids], -1)
      out["top_p"][b, :m] = np.asarray(feat.top_p[s + tc], np.float32)
    return {"h": self.rows(feat, "hidden", rows, L), **{k: jnp.asarray(v) for k, v in out.items()}}

  def batch(self, units, step):
    rng = np.random.default_rng([self.c.seed, 7, step])
    return self._arrays(self.train, [tuple(self.spans_train[u]) for u in units], rng, self.positions)

  def loss(self, p, consts, batch):
    return loss_fn(self.heads, p, consts, batch, targets=self.c.targets)

  BUDGETS = (4, 6, 8, 12, 16, 24)                                    # nodes of the tau estimates
  EVAL_POSITIONS = 64                                                # head positions per held-out sequence

  def _eval_fn(self):
    """Jitted, compiled once per run: (p, batch of one sequence padded to the longest held-out one)
    -> (tokens, parents) of the tree at each head position for every budget, and the teacher-forced
    top-5 [P, K, 5] of every head."""
    if not self._eval_fns:
      heads, consts, K = self.heads, self.consts, self.c.heads
      embed = self.embed_fn()

      def f(p, batch):
        u, k, v = sequence_features(heads, p, consts["embed"], batch["h"], batch["nxt"], batch["length"])
        sel = batch["sel"][0]
        P = sel.shape[0]
        logits_fn = lambda out: jax.nn.log_softmax(numerics.dot(out, consts["head_w"]), -1)
        bc = lambda x: jnp.broadcast_to(x, (P,) + x.shape[1:])
        ctx = (bc(k), bc(v), sel + 1, sel)
        trees = [clover.grow(heads, p, logits_fn, embed, u[0, sel], batch["nxt"][0, sel], ctx, depth=K, nodes=n,
                             top_p=clover.TOP_P[self.version], quarter=self.version == 1)[:2] for n in self.BUDGETS]
        out = head_outputs(heads, p, consts["embed"], u, k, v, batch["sel"], batch["ys"])[0]
        return trees, jax.lax.top_k(numerics.dot(out, consts["head_w"]), 5)[1]
      self._eval_fns["f"] = jax.jit(f)
    return self._eval_fns["f"]

  def summarize(self, p):
    """Held-out: per-head top-1/top-5 (teacher forced) and the EXACT tau of the dynamic tree (the
    deepest node whose whole path is the target's own greedy continuation) for several budgets."""
    rng = np.random.default_rng([self.c.seed, 11])
    P = self.EVAL_POSITIONS
    n_seq = max(1, min(len(self.spans_held), self.c.eval_positions // P))
    spans_eval = self.spans_held[:n_seq]
    L = self.padded(spans_eval)
    acc = {b: [] for b in self.BUDGETS}
    hits = []
    for s, e in spans_eval:
      batch = self._arrays(self.held, [(s, e)], rng, P, length=L)
      valid = np.asarray(batch["valid"][0])
      m = int(valid[:, 0].sum())
      if m == 0:
        continue
      # The target's greedy continuation after x_{t+1}: its top-1 at t+1, t+2, ... (-1 past the end).
      truth = np.where(valid[:m], self.held.top_ids[s + np.asarray(batch["tgt"][0])[:m], 0], -1)
      lab = np.where(valid[:m], self.index[np.maximum(truth, 0)], -2)
      trees, top5 = jax.device_get(self._eval_fn()(p, batch))
      for b, (tok, parent) in zip(self.BUDGETS, trees):
        acc[b].append(accepted(tok[:m], parent[:m], truth))
      hits.append(np.where(lab[..., None] == top5[:m], np.arange(5), 5).min(-1))
    ranks = np.concatenate(hits)                                                     # [n, K] rank (5 = absent)
    tau_by = {str(n): 1.0 + float(np.concatenate(acc[n]).mean()) for n in self.BUDGETS}
    main = min(self.BUDGETS, key=lambda n: abs(n - self.c.nodes))
    return {"top1": [float(x) for x in (ranks == 0).mean(0)], "top5": [float(x) for x in (ranks < 5).mean(0)],
            "tau": tau_by[str(main)], "tree_nodes": main, "tau_by_nodes": tau_by,
            "positions": int(sum(len(a) for a in acc[main]))}

  def drafter(self, p, summary):
    cls = clover.Clover1 if self.version == 1 else clover.Clover2
    d = cls.for_target(self.target, heads=self.c.heads, aug_layers=self.c.layers,
                       draft_vocab=0 if self.vocab is None else len(self.vocab))
    return d.with_weights({k: np.asarray(v, np.float32) for k, v in p.items()}, self.vocab)


RECIPE = CloverRecipe      # what `specjax train --drafter clover|clover2` runs (loop.RECIPES)
