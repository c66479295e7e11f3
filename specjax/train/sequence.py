"""Training recipes for drafters trained on whole sequences (Clover, Clover-2, EAGLE, EAGLE-3): a
batch is a few sequences of full features (the prompt's positions too), and held-out evaluation
grows the drafter's own dynamic tree and measures its exact expected acceptance length.

A recipe is what `loop.fit` needs from a drafter: `units` to sample batches from, `batch`, `init`,
`loss`, `summarize` and `drafter` (see loop.MedusaRecipe).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.train.data import draft_vocab

if TYPE_CHECKING:
  from specjax.train.loop import TrainConfig


def spans(feat) -> np.ndarray:
  """[n, 2] (start, end) of each sequence in concatenated features."""
  cut = np.flatnonzero(np.diff(feat.seq) != 0) + 1
  starts = np.concatenate([[0], cut])
  return np.stack([starts, np.concatenate([cut, [len(feat)]])], 1)


def _accepted(tok, parent, truth) -> np.ndarray:
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


class SequenceRecipe:
  """Drafters trained on whole sequences (full features: the prompt's positions too), a batch being
  `batch` sequences padded to a multiple of `bucket`: Clover's augmenting block and EAGLE's draft
  layer attend over the prompt and the answer."""
  defaults = dict(batch=4, clip=0.5, b2=0.95)
  clip_by = "value"                 # the public Clover-2 and EAGLE trainers clip gradient values at 0.5
  bucket = 128

  @staticmethod
  def capture_for(cfg, c=None) -> tuple:
    """Target layers whose residuals the features must keep (none: the last hidden state only)."""
    return ()

  def __init__(self, target, train, held, c: TrainConfig):
    self.c, self.target, self.train, self.held = c, target, train, held
    model = target.model
    self.vocab, self.coverage, self.index = draft_vocab(train, target.cfg.vocab, c.draft_vocab)
    self.consts = dict(embed=jnp.asarray(model.embed[...], jnp.float32), norm_w=model.final_norm[...],
                       head_w=jnp.asarray(model.head_weight(None if self.vocab is None else jnp.asarray(self.vocab)),
                                          jnp.float32))
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


class CloverRecipe(SequenceRecipe):
  """Clover and Clover-2: the heads' losses are taken at `positions` random answer positions a sequence."""
  positions = 128

  def __init__(self, target, train, held, c: TrainConfig):
    from specjax.drafters import clover
    super().__init__(target, train, held, c)
    self.cl = clover
    self.version = 1 if c.drafter == "clover" else 2
    self.heads = clover.Heads(self.version, target.cfg)

  def init(self):
    w = self.cl.initial(self.target, version=self.version, aug_layers=self.c.layers, seed=self.c.seed)
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
    return self.cl.loss_fn(self.heads, p, consts, batch)

  BUDGETS = (4, 6, 8, 12, 16, 24)                                    # nodes of the tau estimates
  EVAL_POSITIONS = 64                                                # head positions per held-out sequence

  def _eval_fn(self):
    """Jitted, compiled once per run: (p, batch of one sequence padded to the longest held-out one)
    -> (tokens, parents) of the tree at each head position for every budget, and the teacher-forced
    top-5 [P, K, 5] of every head."""
    if not self._eval_fns:
      cl, heads, consts, K = self.cl, self.heads, self.consts, self.c.heads
      embed = self.embed_fn()

      def f(p, batch):
        u, k, v = cl.sequence_features(heads, p, consts["embed"], batch["h"], batch["nxt"], batch["length"])
        sel = batch["sel"][0]
        P = sel.shape[0]
        logits_fn = lambda out: jax.nn.log_softmax(numerics.dot(out, consts["head_w"]), -1)
        bc = lambda x: jnp.broadcast_to(x, (P,) + x.shape[1:])
        ctx = (bc(k), bc(v), sel + 1, sel)
        trees = [cl.grow(heads, p, logits_fn, embed, u[0, sel], batch["nxt"][0, sel], ctx, depth=K, nodes=n,
                         top_p=cl.TOP_P[self.version], quarter=self.version == 1)[:2] for n in self.BUDGETS]
        out = cl.head_outputs(heads, p, consts["embed"], u, k, v, batch["sel"], batch["ys"])[0]
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
        acc[b].append(_accepted(tok[:m], parent[:m], truth))
      hits.append(np.where(lab[..., None] == top5[:m], np.arange(5), 5).min(-1))
    ranks = np.concatenate(hits)                                                     # [n, K] rank (5 = absent)
    tau_by = {str(n): 1.0 + float(np.concatenate(acc[n]).mean()) for n in self.BUDGETS}
    main = min(self.BUDGETS, key=lambda n: abs(n - self.c.nodes))
    return {"top1": [float(x) for x in (ranks == 0).mean(0)], "top5": [float(x) for x in (ranks < 5).mean(0)],
            "tau": tau_by[str(main)], "tree_nodes": main, "tau_by_nodes": tau_by,
            "positions": int(sum(len(a) for a in acc[main]))}

  def drafter(self, p, summary):
    cls = self.cl.Clover1 if self.version == 1 else self.cl.Clover2
    d = cls.for_target(self.target, heads=self.c.heads, aug_layers=self.c.layers,
                       draft_vocab=0 if self.vocab is None else len(self.vocab))
    return d.with_weights({k: np.asarray(v, np.float32) for k, v in p.items()}, self.vocab)


class EagleRecipe(SequenceRecipe):
  """EAGLE-1's recipe (`eagle`): the draft teacher-forced over whole sequences (features
  U(-noise/2, noise/2) noised), SmoothL1 + 0.1 CE at every answer entry. EAGLE-3's (`eagle3`):
  features from three captured layers, training-time test over `heads` steps (0.8^i, soft CE).
  Held-out tau is the exact tau of EAGLE-2's dynamic tree. (`layers` does not apply: one layer.)"""
  noise = 0.2                       # EAGLE's uniform feature noise (width 0.2)
  BUDGETS = ((3, 4, 4), (4, 4, 8), (5, 4, 10), (5, 6, 16), (6, 8, 24), (7, 10, 60))   # (depth, top_k, nodes)
  EVAL_POSITIONS = 64               # tree roots per held-out sequence

  def __init__(self, target, train, held, c: TrainConfig):
    from specjax.drafters import eagle
    super().__init__(target, train, held, c)
    self.eg = eagle
    self.three = c.drafter == "eagle3"
    if self.three and train.layers is None:
      raise ValueError("eagle3 trains on features with captured layers (prepare_data(..., capture=...))")

  def init(self):
    return {k: jnp.asarray(v) for k, v in self.eg.initial(self.target, seed=self.c.seed, three=self.three).items()}

  def features(self, p, batch):
    """The draft's step-0 input features [B, L, H]: norm(h) (EAGLE-1) or the fused layers (EAGLE-3)."""
    from specjax.models.llama import rms_norm
    if self.three:
      return self.eg.fuse(self.target.cfg, p, batch["layers"])
    return rms_norm(batch["h"], self.consts["norm_w"], self.target.cfg.norm_eps)

  def _arrays(self, feat, rows, L):
    """h [B, L, H] (EAGLE-1) or layers [B, L, C, H] (EAGLE-3), nxt [B, L], valid [B, L] (entry t:
    t+1 is an answer position in the sequence), top_idx, top_p [B, L, 8] the target's distribution at
    t+1 (draft-vocab indices)."""
    B = len(rows)
    out = dict(nxt=np.zeros((B, L), np.int32), valid=np.zeros((B, L), bool),
               top_idx=np.full((B, L, 8), -1, np.int32), top_p=np.zeros((B, L, 8), np.float32))
    for b, (s, e) in enumerate(rows):
      n = e - s
      out["nxt"][b, :n - 1] = feat.token[s + 1:e]
      out["valid"][b, :n - 1] = feat.pos[s + 1:e] >= 0
      out["top_idx"][b, :n - 1] = self.index[feat.top_ids[s + 1:e]]
      out["top_p"][b, :n - 1] = np.asarray(feat.top_p[s + 1:e], np.float32)
    name = "layers" if self.three else "h"
    return {name: self.rows(feat, "layers" if self.three else "hidden", rows, L),
            **{k: jnp.asarray(v) for k, v in out.items()}}

  def batch(self, units, step):
    rows = [tuple(self.spans_train[u]) for u in units]
    out = self._arrays(self.train, rows, self.padded(rows))
    if not self.three:                # EAGLE-1's input noise U(-noise/2, noise/2), drawn on the device
      key = jax.random.fold_in(jax.random.key(self.c.seed), step)
      out["noise"] = (jax.random.uniform(key, out["h"].shape) - 0.5) * self.noise
    return out

  def loss(self, p, consts, batch):
    if self.three:
      return self.eg.ttt_loss(self.target.cfg, p, consts, batch, steps=self.c.heads)
    return self.eg.loss_fn(self.target.cfg, p, consts, batch)

  def _eval_fn(self):
    """Jitted once per run: (p, one sequence's arrays, roots r [P]) -> (tokens, parents) of the tree
    grown at each root for every budget, and the teacher-forced top-5 [L, 5] of the draft head."""
    if not self._eval_fns:
      eg, consts, cfg = self.eg, self.consts, self.target.cfg
      embed = self.embed_fn()

      def f(p, batch, r):
        logp_fn = lambda g: jax.nn.log_softmax(numerics.dot(eg.head_input(cfg, p, g), consts["head_w"]), -1)
        g, k, v = eg.sequence_outputs(cfg, p, consts["embed"], self.features(p, batch), batch["nxt"])
        P = r.shape[0]
        bc = lambda x: jnp.broadcast_to(x, (P,) + x.shape[1:])
        trees = [eg.grow(cfg, p, logp_fn, embed, g[0, r - 1], batch["nxt"][0, r - 1], bc(k), bc(v), r, depth=dp,
                         top_k=tk, nodes=n)[:2] for dp, tk, n in self.BUDGETS]
        return trees, jax.lax.top_k(numerics.dot(eg.head_input(cfg, p, g[0]), consts["head_w"]), 5)[1]
      self._eval_fns["f"] = jax.jit(f)
    return self._eval_fns["f"]

  def summarize(self, p):
    """Held-out: the draft head's top-1/top-5 (teacher forced, [one entry]) and the EXACT tau of the
    dynamic tree (the deepest node whose whole path is the target's own greedy continuation) at
    random answer roots, for several budgets (depth/top_k/nodes)."""
    rng = np.random.default_rng([self.c.seed, 11])
    P = self.EVAL_POSITIONS
    n_seq = max(1, min(len(self.spans_held), self.c.eval_positions // P))
    spans_eval = self.spans_held[:n_seq]
    L = self.padded(spans_eval)
    K = max(b[0] for b in self.BUDGETS)
    acc = {b: [] for b in self.BUDGETS}
    hits = []
    for s, e in spans_eval:
      n = e - s
      batch = self._arrays(self.held, [(s, e)], L)
      # Roots as decoding meets them: the last prompt token and the answer's tokens (with a draft entry before).
      cand = np.flatnonzero((self.held.pos[s:e] >= 0) & (np.arange(n) >= 1) & (np.arange(n) < n - 1))
      if len(cand) == 0:
        continue
      r = np.sort(rng.choice(cand, min(P, len(cand)), replace=False))
      r_pad = np.pad(r, (0, P - len(r)), mode="edge")
      # The target's greedy continuation after x_r: its top-1 at r, r+1, ... (-1 past the end).
      at = r[:, None] + np.arange(K)[None]
      truth = np.where(at < n, self.held.top_ids[s + np.minimum(at, n - 1), 0], -1)
      trees, top5 = jax.device_get(self._eval_fn()(p, batch, jnp.asarray(r_pad, jnp.int32)))
      for b, (tok, parent) in zip(self.BUDGETS, trees):
        acc[b].append(_accepted(tok[:len(r)], parent[:len(r)], truth))
      valid = np.asarray(batch["valid"][0])
      lab = np.asarray(batch["top_idx"][0, :, 0])
      ok = valid & (lab >= 0)
      hits.append(np.where(lab[ok, None] == top5[ok], np.arange(5), 5).min(-1))
    ranks = np.concatenate(hits)
    tau_by = {f"{d}/{k}/{n}": 1.0 + float(np.concatenate(acc[(d, k, n)]).mean()) for d, k, n in self.BUDGETS}
    main = min(self.BUDGETS, key=lambda b: abs(b[2] - self.c.nodes))
    return {"top1": [float((ranks == 0).mean())], "top5": [float((ranks < 5).mean())],
            "tau": tau_by["/".join(map(str, main))], "tree_nodes": main[2], "tau_by_nodes": tau_by,
            "positions": int(sum(len(a) for a in acc[main]))}

  def drafter(self, p, summary):
    cls = self.eg.Eagle3 if self.three else self.eg.Eagle
    d = cls.for_target(self.target, draft_vocab=0 if self.vocab is None else len(self.vocab))
    return d.with_weights({k: np.asarray(v, np.float32) for k, v in p.items()}, self.vocab)


class Eagle3Recipe(EagleRecipe):
  """EAGLE-3: EagleRecipe on features with the low/mid/high layers captured."""

  @classmethod
  def capture_for(cls, cfg, c=None) -> tuple:
    from specjax.drafters.eagle import fuse_layers
    return fuse_layers(cfg.layers)
