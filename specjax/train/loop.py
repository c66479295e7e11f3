"""The drafter training loop: optax AdamW with warm-up + cosine decay and gradient clipping, a jitted
step, orbax checkpoints every `save_every` steps, exact resume (same optimiser state, same data
order: batch s is a function of the seed and s alone), held-out evaluation with the expected
acceptance length of the tree the drafter will use.

Training runs in float32: the heads are small (a few M parameters), the CPU's float32 matmuls are
several times faster than its bfloat16 ones (DESIGN.md), and the shipped checkpoint is cast to
bfloat16 once at the end.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from specjax.engine import tree as tree_lib

KMAX = 10   # ranks measured per head (a tree never uses more siblings than this)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Training settings. Fields left None take the drafter recipe's defaults (`Recipe.defaults`)."""
  drafter: str = "medusa"
  steps: int = 2000
  batch: int | None = None    # Medusa: positions per step (256); Clover: sequences per step (4)
  lr: float = 1e-3
  warmup: int = 100
  weight_decay: float = 0.0
  clip: float | None = None   # gradient clipping: by global norm (Medusa, 1.0) or by value (Clover, 0.5)
  b1: float = 0.9
  b2: float | None = None     # Medusa 0.999; Clover 0.95 (the public Clover-2 trainer)
  seed: int = 0
  eval_every: int = 500
  save_every: int = 250
  eval_positions: int = 8192
  heads: int = 4
  layers: int = 1             # Medusa: ResBlocks per head; Clover: augmenting decoder layers
  draft_vocab: int = 4096     # 0: the full vocabulary (4096 measured best, BENCHMARKS.md)
  nodes: int = 12             # tree budget used for the tau estimate and stored in the checkpoint

  def resolved(self) -> "TrainConfig":
    d = RECIPES[self.drafter].defaults
    return dataclasses.replace(self, **{k: v for k, v in d.items() if getattr(self, k) is None})


def _schedule(c: TrainConfig):
  return optax.warmup_cosine_decay_schedule(0.0, c.lr, max(c.warmup, 1), max(c.steps, c.warmup + 1), c.lr * 0.05)


def optimizer(c: TrainConfig):
  clip = optax.clip(c.clip) if RECIPES[c.drafter].clip_by == "value" else optax.clip_by_global_norm(c.clip)
  return optax.chain(clip, optax.adamw(_schedule(c), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay))


def batch_indices(n: int, step: int, batch: int, seed: int) -> np.ndarray:
  """Units of batch `step`: epochs of a seeded permutation, so a resumed run sees the same data."""
  per_epoch = max(n // batch, 1)
  epoch, i = divmod(step, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[i * batch:(i + 1) * batch]


def draft_vocab(train, V: int, n: int):
  """(vocab [n] sorted target ids or None, coverage, index [V] target id -> draft index or -1): the n
  tokens the target predicts most often on the training data (EAGLE-3's / FR-Spec's reduced vocabulary)."""
  if not n or n >= V:
    return None, 1.0, np.arange(V, dtype=np.int32)
  counts = np.bincount(train.top_ids[:, 0], minlength=V)
  vocab = np.sort(np.argsort(-counts, kind="stable")[:n]).astype(np.int32)
  index = np.full(V, -1, np.int32)
  index[vocab] = np.arange(n, dtype=np.int32)
  return vocab, float(counts[vocab].sum() / max(counts.sum(), 1)), index


class MedusaRecipe:
  """What the loop needs from a drafter: units to sample batches from, a batch, initial weights, the
  loss, a held-out summary (with the exact tau of the tree it will use) and the drafter itself."""
  defaults = dict(batch=256, clip=1.0, b2=0.999)
  clip_by = "norm"
  full_features = False

  @staticmethod
  def capture_for(cfg) -> tuple:
    """Target layers whose residuals the features must keep (none: the last hidden state only)."""
    return ()

  def __init__(self, target, train, held, c: TrainConfig):
    from specjax.drafters import medusa
    self.m, self.c, self.target, self.train, self.held = medusa, c, target, train, held
    model = target.model
    self.vocab, self.coverage, self.index = draft_vocab(train, target.cfg.vocab, c.draft_vocab)
    self.consts = dict(norm_w=model.final_norm[...],
                       head_w=jnp.asarray(model.head_weight(None if self.vocab is None else jnp.asarray(self.vocab)),
                                          jnp.float32))
    self.eps = target.cfg.norm_eps
    self.lab_train, self.lab_held = self.labels(train), self.labels(held)
    self.pos_train = np.flatnonzero((self.lab_train[:, 0] >= 0) & (train.pos >= 0))     # answer positions only
    pos_held = np.flatnonzero((self.lab_held[:, 0] >= 0) & (held.pos >= 0))
    if len(self.pos_train) < c.batch:
      raise ValueError(f"only {len(self.pos_train)} training positions, fewer than a batch of {c.batch}")
    rng = np.random.default_rng(c.seed)
    self.ev_held = np.sort(rng.choice(pos_held, min(len(pos_held), c.eval_positions), replace=False))
    self.ev_train = np.sort(rng.choice(self.pos_train, min(len(self.pos_train), c.eval_positions), replace=False))
    self.units = len(self.pos_train)
    self._rank_fn = jax.jit(self.ranks)           # one compile for every evaluation of the run

  def labels(self, feat):
    lab = self.m.labels(feat, self.c.heads)
    return np.where(lab >= 0, self.index[np.maximum(lab, 0)], -1)

  def batch(self, units, step):
    idx = self.pos_train[units]
    return {"h": jnp.asarray(np.asarray(self.train.hidden[idx], np.float32)), "lab": jnp.asarray(self.lab_train[idx])}

  def init(self):
    H = self.target.cfg.hidden
    return {"w": jnp.zeros((self.c.heads, self.c.layers, H, H)), "b": jnp.zeros((self.c.heads, self.c.layers, H))}

  def loss(self, p, consts, batch):
    return self.m.loss_fn(p, consts["norm_w"], consts["head_w"], batch["h"], batch["lab"], eps=self.eps)

  def ranks(self, p, consts, h, lab):
    return self.m.ranks(p, consts["norm_w"], consts["head_w"], h, lab, eps=self.eps, kmax=KMAX)

  def summarize(self, p):
    return summarize(evaluate(self._rank_fn, p, self.consts, self.held, self.lab_held, self.ev_held),
                     evaluate(self._rank_fn, p, self.consts, self.train, self.lab_train, self.ev_train), self.c.nodes)

  def drafter(self, p, summary):
    from flax import nnx
    c = self.c
    d = self.m.Medusa(heads=c.heads, layers=c.layers, hidden=self.target.cfg.hidden,
                      draft_vocab=0 if self.vocab is None else len(self.vocab), nodes=c.nodes,
                      accuracy=tuple(tuple(round(float(x), 4) for x in row) for row in summary["table"]))
    module = self.m.MedusaHeads(hidden=d.hidden, heads=d.heads, layers=d.layers, vocab=self.vocab)
    module.w[...] = jnp.asarray(p["w"], jnp.float32)
    module.b[...] = jnp.asarray(p["b"], jnp.float32)
    return dataclasses.replace(d, params=nnx.state(module))


def spans(feat) -> np.ndarray:
  """[n, 2] (start, end) of each sequence in concatenated features."""
  cut = np.flatnonzero(np.diff(feat.seq) != 0) + 1
  starts = np.concatenate([[0], cut])
  return np.stack([starts, np.concatenate([cut, [len(feat)]])], 1)


class SequenceRecipe:
  """Drafters trained on whole sequences (full features: the prompt's positions too), a batch being
  `batch` sequences padded to a multiple of `bucket`: Clover's augmenting block and EAGLE's draft
  layer attend over the prompt and the answer."""
  defaults = dict(batch=4, clip=0.5, b2=0.95)
  clip_by = "value"                 # the public Clover-2 and EAGLE trainers clip gradient values at 0.5
  full_features = True
  bucket = 128
  capture_for = staticmethod(MedusaRecipe.capture_for)

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
    out = dict(h=np.zeros((B, L, H), np.float32), nxt=np.zeros((B, L), np.int32), length=np.zeros(B, np.int32),
               sel=np.zeros((B, P), np.int32), ys=np.zeros((B, P, K), np.int32), valid=np.zeros((B, P, K), bool),
               tgt=np.zeros((B, P, K), np.int32), top_idx=np.full((B, P, K, 8), -1, np.int32),
               top_p=np.zeros((B, P, K, 8), np.float32))
    for b, (s, e) in enumerate(rows):
      n = e - s
      out["h"][b, :n] = np.asarray(feat.hidden[s:e], np.float32)
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
    return {k: jnp.asarray(v) for k, v in out.items()}

  def batch(self, units, step):
    rng = np.random.default_rng([self.c.seed, 7, step])
    return self._arrays(self.train, [tuple(self.spans_train[u]) for u in units], rng, self.positions)

  def loss(self, p, consts, batch):
    return self.cl.loss_fn(self.heads, p, consts, batch)

  BUDGETS = ((4, 4), (6, 4), (8, 4), (12, 6), (16, 8), (24, 8))     # (nodes, width) of the tau estimates
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
        logits_fn = lambda out: jax.nn.log_softmax(jnp.dot(out, consts["head_w"]), -1)
        bc = lambda x: jnp.broadcast_to(x, (P,) + x.shape[1:])
        ctx = (bc(k), bc(v), sel + 1, sel)
        trees = [cl.grow(heads, p, logits_fn, embed, u[0, sel], batch["nxt"][0, sel], ctx, depth=K, children=4,
                         width=w, nodes=n, threshold=0.95 if self.version == 2 else 0.0)[:2] for n, w in self.BUDGETS]
        out = cl.head_outputs(heads, p, consts["embed"], u, k, v, batch["sel"], batch["ys"])[0]
        return trees, jax.lax.top_k(jnp.dot(out, consts["head_w"]), 5)[1]
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
    tau_by = {f"{n}/{w}": 1.0 + float(np.concatenate(acc[(n, w)]).mean()) for n, w in self.BUDGETS}
    main = min(self.BUDGETS, key=lambda b: abs(b[0] - self.c.nodes))
    return {"top1": [float(x) for x in (ranks == 0).mean(0)], "top5": [float(x) for x in (ranks < 5).mean(0)],
            "tau": tau_by[f"{main[0]}/{main[1]}"], "tree_nodes": main[0], "tau_by_nodes": tau_by,
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

  def _arrays(self, feat, rows, L, noise_rng=None):
    """h [B, L, H], nxt [B, L], noise [B, L, H], valid [B, L] (entry t: t+1 is an answer position in
    the sequence), top_idx, top_p [B, L, 8] the target's distribution at t+1 (draft-vocab indices)."""
    B, H = len(rows), feat.hidden.shape[1]
    out = dict(h=np.zeros((B, L, H), np.float32), nxt=np.zeros((B, L), np.int32), valid=np.zeros((B, L), bool),
               top_idx=np.full((B, L, 8), -1, np.int32), top_p=np.zeros((B, L, 8), np.float32))
    if self.three:
      out["layers"] = np.zeros((B, L) + feat.layers.shape[1:], np.float32)
    for b, (s, e) in enumerate(rows):
      n = e - s
      out["h"][b, :n] = np.asarray(feat.hidden[s:e], np.float32)
      if self.three:
        out["layers"][b, :n] = feat.layers[s:e]
      out["nxt"][b, :n - 1] = feat.token[s + 1:e]
      out["valid"][b, :n - 1] = feat.pos[s + 1:e] >= 0
      out["top_idx"][b, :n - 1] = self.index[feat.top_ids[s + 1:e]]
      out["top_p"][b, :n - 1] = np.asarray(feat.top_p[s + 1:e], np.float32)
    out["noise"] = (np.zeros((B, L, H), np.float32) if noise_rng is None else
                    ((noise_rng.random((B, L, H), np.float32) - 0.5) * self.noise))
    return {k: jnp.asarray(v) for k, v in out.items()}

  def batch(self, units, step):
    rows = [tuple(self.spans_train[u]) for u in units]
    return self._arrays(self.train, rows, self.padded(rows), np.random.default_rng([self.c.seed, 7, step]))

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
        logp_fn = lambda g: jax.nn.log_softmax(jnp.dot(eg.head_input(cfg, p, g), consts["head_w"]), -1)
        g, k, v = eg.sequence_outputs(cfg, p, consts["embed"], self.features(p, batch), batch["nxt"])
        P = r.shape[0]
        bc = lambda x: jnp.broadcast_to(x, (P,) + x.shape[1:])
        trees = [eg.grow(cfg, p, logp_fn, embed, g[0, r - 1], batch["nxt"][0, r - 1], bc(k), bc(v), r, depth=dp,
                         top_k=tk, nodes=n)[:2] for dp, tk, n in self.BUDGETS]
        return trees, jax.lax.top_k(jnp.dot(eg.head_input(cfg, p, g[0]), consts["head_w"]), 5)[1]
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
      cand = np.flatnonzero((self.held.pos[s:e] > 0) & (np.arange(n) < n - 1))   # roots: answer tokens after the first
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


class Eagle3Recipe(EagleRecipe):
  """EAGLE-3: EagleRecipe on features with the low/mid/high layers captured."""

  @classmethod
  def capture_for(cls, cfg) -> tuple:
    from specjax.drafters.eagle import fuse_layers
    return fuse_layers(cfg.layers)


RECIPES = {"medusa": MedusaRecipe, "clover": CloverRecipe, "clover2": CloverRecipe, "eagle": EagleRecipe,
           "eagle3": Eagle3Recipe}


def evaluate(fn, p, consts, feat, lab, positions: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
  """[n, K] label ranks (KMAX = absent) at the given positions; fn: the recipe's jitted `ranks`."""
  out = []
  for s in range(0, len(positions), chunk):
    idx = positions[s:s + chunk]
    pad = chunk - len(idx)
    idx_p = np.pad(idx, (0, pad))
    r = np.asarray(fn(p, consts, jnp.asarray(np.asarray(feat.hidden[idx_p], np.float32)), jnp.asarray(lab[idx_p])))
    out.append(r[:len(idx)])
  return np.concatenate(out) if out else np.zeros((0, lab.shape[1]), np.int64)


def summarize(held_ranks: np.ndarray, train_ranks: np.ndarray, nodes: int) -> dict:
  """Per-head top-1 / top-5 accuracy on held-out positions, the acceptance table (from training
  positions) and the exact tau of the tree grown from it, on held-out positions."""
  table = tree_lib.acceptance_table(train_ranks, KMAX)
  shape = tree_lib.grow(table, nodes)
  acc_len = tree_lib.accepted_lengths(held_ranks, shape)
  return {"top1": [float(x) for x in (held_ranks == 0).mean(0)],
          "top5": [float(x) for x in (held_ranks < 5).mean(0)],
          "tau": 1.0 + float(acc_len.mean()), "table": table.tolist(), "tree_nodes": nodes,
          "tau_by_nodes": {n: 1.0 + float(tree_lib.accepted_lengths(held_ranks, tree_lib.grow(table, n)).mean())
                           for n in (4, 8, 12, 16, 24, 32)}}


def fit(target, train, held, c: TrainConfig, out: pathlib.Path, *, stop_after: int | None = None,
        progress: bool = True, log=print):
  """Trains, checkpointing to out/state (orbax) and resuming from it; returns (drafter, summary).
  stop_after: return after that many steps of this call (what a crash after a checkpoint leaves)."""
  import orbax.checkpoint as ocp
  from tqdm import tqdm

  c = c.resolved()
  out = pathlib.Path(out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  settings = out / "settings.json"
  mine = json.dumps(dataclasses.asdict(c), sort_keys=True)
  if settings.exists() and settings.read_text() != mine:
    raise ValueError(f"{out} holds a training run with other settings ({settings}); use another --out or --overwrite")
  settings.write_text(mine)

  recipe = RECIPES[c.drafter](target, train, held, c)
  opt = optimizer(c)
  consts = recipe.consts
  params = recipe.init()
  opt_state = opt.init(params)
  mngr = ocp.CheckpointManager(out / "state", options=ocp.CheckpointManagerOptions(max_to_keep=2))
  start = 0
  if mngr.latest_step() is not None:
    start = mngr.latest_step()
    abstract = {"params": params, "opt": opt_state}
    restored = mngr.restore(start, args=ocp.args.StandardRestore(abstract))
    params, opt_state = restored["params"], restored["opt"]
    log(f"resumed from step {start} ({out / 'state'})")

  @jax.jit
  def step_fn(params, opt_state, batch):
    (loss, acc), grads = jax.value_and_grad(recipe.loss, has_aux=True)(params, consts, batch)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  end = c.steps if stop_after is None else min(c.steps, start + stop_after)
  bar = tqdm(range(start, end), initial=start, total=c.steps, disable=not progress, desc=f"train {c.drafter}",
             mininterval=2.0)
  t0, seen, summary = time.perf_counter(), 0, None
  log_path = out / "log.jsonl"
  for s in bar:
    params, opt_state, loss, acc = step_fn(params, opt_state, recipe.batch(batch_indices(recipe.units, s, c.batch, c.seed), s))
    seen += c.batch
    done = s + 1
    if done % 20 == 0 or done == end:
      accs = " ".join(f"{a:.2f}" for a in np.asarray(acc))
      bar.set_postfix_str(f"loss {float(loss):.3f} top1 [{accs}] {seen / (time.perf_counter() - t0):.1f} units/s")
    if done % c.save_every == 0 or done == c.steps:
      mngr.save(done, args=ocp.args.StandardSave({"params": params, "opt": opt_state}))
      mngr.wait_until_finished()
    if done % c.eval_every == 0 or done == c.steps:
      summary = recipe.summarize(params)
      row = {"step": done, "loss": float(loss), "top1": summary["top1"], "top5": summary["top5"], "tau": summary["tau"],
             "tau_by_nodes": summary["tau_by_nodes"], "wall_s": time.perf_counter() - t0}
      with open(log_path, "a") as f:
        f.write(json.dumps(row) + "\n")
      bar.write(f"step {done}: held-out top1 {['%.3f' % x for x in summary['top1']]} "
                f"top5 {['%.3f' % x for x in summary['top5']]} tau({summary['tree_nodes']} nodes) {summary['tau']:.3f}")
  mngr.wait_until_finished()
  if summary is None:
    summary = recipe.summarize(params)
  summary.update(vocab_coverage=recipe.coverage, steps_done=end, wall_s_this_run=time.perf_counter() - t0)
  return recipe.drafter(params, summary), summary
