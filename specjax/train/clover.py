"""Clover's and Clover-2's training (drafters/clover.py decodes): the augmenting block and the heads
teacher-forced over whole sequences, their losses, and the recipe `loop.fit` runs (a batch is a few whole
sequences; the heads' losses are taken at random answer positions; held-out evaluation grows the drafter's
own tree and measures its exact expected acceptance length)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.drafters import clover, flat
from specjax.models.llama import rms_norm
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


def loss_fn(heads: clover.Heads, p, consts, batch):
  """Clover-2: per head i, (10 SmoothL1(out_i, normed target state at t+1+i) + soft cross-entropy
  against the target's top-8 distribution there) x 0.7^i. Clover-1: cross-entropy against the
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
    ce = -jnp.sum(jnp.where(top_idx >= 0, top_p * jnp.take_along_axis(logp, jnp.maximum(top_idx, 0), -1), 0.0), -1)
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

  def __init__(self, target, train, held, c):
    super().__init__(target, train, held, c)
    self.version = 1 if c.drafter == "clover" else 2
    self.heads = clover.Heads(self.version, target.cfg)

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
      cand = np.flatnonzero((feat.pos[s:e] >= 0) & (np.arange(n) + 1 < n))
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
    return loss_fn(self.heads, p, consts, batch)

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
