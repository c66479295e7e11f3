"""EAGLE's and EAGLE-3's training (drafters/eagle.py decodes): the draft teacher-forced over whole
sequences, EAGLE-1's loss, EAGLE-3's training-time test, and the recipe `loop.fit` runs (a batch is a few
whole sequences; held-out evaluation grows EAGLE-2's dynamic tree and measures its exact tau).

As the public trainers (SafeAILab/EAGLE `eagle/train/main.py`, `eagle/traineagle3/`; docs/PUBLIC_TRAINERS.md):
soft targets are the target's full softmax at temperature 1, recomputed in the loss with the frozen head
from the stored hidden state (EAGLE-3: over the draft vocabulary, renormalised, positions whose target
argmax lies outside it masked); EAGLE-1's input noise is uniform, zero-centred, of half-width
0.1 x 512 / L (L the sequence's length), on the input features only; AdamW betas (0.9, 0.95); EAGLE-1
weight decay 0.01 and gradient values clipped at 0.5; EAGLE-3 weight decay 0 and the global norm clipped
at 0.5, 7 training-time-test steps weighted 0.8^i, its own trainable draft-vocabulary head.

Deviations from the public trainers (the drafter's own are listed in drafters/eagle.py):
- The draft vocabulary: the 4096 tokens the target most often predicts (top-1, every position, prompt
  included; data.draft_vocab), where EAGLE-3 keeps the 32000 most frequent answer tokens and EAGLE-1 has
  none. With a reduced vocabulary EAGLE-1's full-softmax targets are read at its tokens only (their tail
  outside it is lost); `--draft-vocab 0` gives the public full vocabulary.
- EAGLE-3's own head starts from the target's head rows over the draft vocabulary (the public one starts
  random); `own_head=False` keeps the target's frozen rows instead.
- EAGLE-3's targets come from the stored bfloat16 last hidden state, where the public trainer runs the
  target online (fp16); its mask reads the stored top-1 (the target's float32 argmax).
- EAGLE-3's per-step loss is divided by the step's valid positions, not by all B x L positions
  (padding included) as the public one is.
- The loss starts one entry earlier than the public assistant-token mask (the entry whose token target
  is the answer's first token).
- The optimiser schedule: lr 1e-3, 100 warm-up steps, cosine decay to 5% (loop.py), where the public
  runs use 3e-5 (EAGLE-1) and 5e-5 (EAGLE-3) with 2000 / 12000 warm-up steps, then nearly constant.
- Training runs in float32 (the public in bf16 / fp16 mixed precision), on the target's greedy answers
  to first turns (prompt's last 256 tokens, answer up to 256; data.py) for a few thousand steps, where
  the public runs train 20-40 epochs on multi-turn ShareGPT (and UltraChat) of up to 2048 tokens.
- `targets="top8"` restores the earlier targets (the stored top-8 probabilities, not renormalised, no
  mask): for comparison only."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.drafters import eagle, flat
from specjax.models.llama import rms_norm
from specjax.train.recipe import soft_ce, soft_targets, top8_ce
from specjax.train.sequence import SequenceRecipe, accepted


def sequence_outputs(cfg, p, embed_w, f, nxt):
  """Teacher-forced draft over whole sequences: f [B, L, H] input features (noised in training),
  nxt [B, L] the token after each position. Returns (g [B, L, H], k, v [B, KVH, L, D]: a draft cache)."""
  B, L, _ = f.shape
  g, k, v = eagle.entries(cfg, p, embed_w[nxt], f, jnp.broadcast_to(jnp.arange(L), (B, L)), eagle.causal(B, L))
  return g, flat.heads_first(k), flat.heads_first(v)


def loss_fn(cfg, p, consts, batch, *, feature_weight: float = 1.0, token_weight: float = 0.1, targets: str = "full"):
  """EAGLE-1's loss: SmoothL1(g_t, f_{t+1}) (mean over H) + 0.1 x soft cross-entropy of head(g_t)
  against the target's distribution at t+1, averaged over valid entries. targets "full": the
  full-vocabulary softmax of the frozen head on f_{t+1} (`soft_targets`); "top8": the stored top-8.
  batch: h [B, L, H] last residuals, nxt [B, L], noise [B, L, H] added to the input features,
  valid [B, L] entries with a loss, top_idx [B, L, 8] draft-vocab indices at t+1 (-1 absent), top_p.
  Returns (loss, [top-1 accuracy])."""
  f = rms_norm(batch["h"], consts["norm_w"], cfg.norm_eps)
  g, _, _ = sequence_outputs(cfg, p, consts["embed"], f + batch["noise"], batch["nxt"])
  want = jnp.concatenate([f[:, 1:], f[:, -1:]], 1)                              # f_{t+1}
  d = jnp.abs(g - want)
  sl1 = jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5), -1)
  logits = numerics.dot(g, consts["head_w"], preferred_element_type=jnp.float32)
  logp = jax.nn.log_softmax(logits, -1)
  top_idx, valid = batch["top_idx"], batch["valid"]
  if targets == "full":
    ce = soft_ce(logp, soft_targets(consts, want, renormalise=False))
  else:
    ce = top8_ce(logp, top_idx, batch["top_p"])
  cnt = jnp.maximum(valid.sum(), 1)
  loss = jnp.sum(jnp.where(valid, feature_weight * sl1 + token_weight * ce, 0.0)) / cnt
  acc = jnp.sum(valid & (jnp.argmax(logits, -1) == top_idx[..., 0])) / cnt
  return loss, acc[None]


def unroll(cfg, p, embed_w, f0, nxt, steps: int):
  """Training-time test (EAGLE-3): the draft over whole sequences, run `steps` times on its own
  outputs. f0 [B, L, H] step 0's input features (the target's at each position t), nxt [B, L] the
  token after each position. Step i's entry t reads step i-1's output at t as its feature and the
  token x_{t+1+i}, sits at rope position t + i and sees step 0's entries up to t (the committed
  sequence) and its own chain (steps 1..i-1 at t): the tree's view of a depth-i node when decoding.
  Returns [steps] outputs [B, L, H]: step i's prediction of the feature at t+1+i."""
  B, L, _ = f0.shape
  eye = jnp.eye(L, dtype=bool)
  f, ks, vs, outs = f0, [], [], []
  for i in range(steps):
    e = embed_w[jnp.pad(nxt[:, i:], ((0, 0), (0, i)))]
    pos = jnp.broadcast_to(jnp.arange(L) + i, (B, L))
    if i == 0:
      g, k, v = eagle.entries(cfg, p, e, f, pos, eagle.causal(B, L))
    else:
      live = jnp.broadcast_to(jnp.concatenate([jnp.tril(jnp.ones((L, L), bool))] + [eye] * (i - 1), 1), (B, L, i * L))
      g, k, v = eagle.entries(cfg, p, e, f, pos, jnp.broadcast_to(eye, (B, L, L)),
                        (jnp.concatenate(ks, 2), jnp.concatenate(vs, 2)), live)
    ks.append(flat.heads_first(k))
    vs.append(flat.heads_first(v))
    outs.append(g)
    f = g
  return outs


def ttt_loss(cfg, p, consts, batch, *, steps: int = 7, decay: float = 0.8, targets: str = "full"):
  """EAGLE-3's loss: sum over steps i of decay^i x the soft cross-entropy of head(norm(g_i)) at t
  against the target's distribution at t+1+i. targets "full": the softmax of the frozen head's
  draft-vocabulary logits on the target's normed state there, scored where t+1+i is an answer position
  whose target top-1 lies in the draft vocabulary; "top8": the stored top-8, scored at every answer
  position. The head is the drafter's own (p["head"]) when it has one, else the target's rows.
  batch: layers [B, L, 3, H] the captured residuals, h [B, L, H] the last residuals ("full" only),
  nxt [B, L], valid, top_idx, top_p as in `loss_fn` (at t+1). Returns (loss, top-1 accuracy per step [steps])."""
  outs = unroll(cfg, p, consts["embed"], eagle.fuse(cfg, p, batch["layers"]), batch["nxt"], steps)
  shift = lambda x, i, fill: jnp.pad(x[:, i:], ((0, 0), (0, i)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)
  lab, valid = batch["top_idx"][..., 0], batch["valid"]
  if targets == "full":
    f = rms_norm(batch["h"], consts["norm_w"], cfg.norm_eps)
    want = soft_targets(consts, jnp.concatenate([f[:, 1:], f[:, -1:]], 1), renormalise=True)   # at t+1
    scored = valid & (lab >= 0)
  else:
    scored = valid
  loss, accs = 0.0, []
  for i, g in enumerate(outs):
    logits = eagle.head_logits(cfg, p, g, consts["head_w"])
    logp = jax.nn.log_softmax(logits, -1)
    if targets == "full":
      ce = soft_ce(logp, shift(want, i, 0.0))
    else:
      ce = top8_ce(logp, shift(batch["top_idx"], i, -1), shift(batch["top_p"], i, 0.0))
    on = shift(scored, i, False)
    loss = loss + decay ** i * jnp.sum(jnp.where(on, ce, 0.0)) / jnp.maximum(on.sum(), 1)
    v = shift(valid, i, False)
    accs.append(jnp.sum(v & (jnp.argmax(logits, -1) == shift(lab, i, -1))) / jnp.maximum(v.sum(), 1))
  return loss, jnp.stack(accs)


class EagleRecipe(SequenceRecipe):
  """EAGLE-1's recipe (`eagle`): the draft teacher-forced over whole sequences (input features noised,
  uniform and zero-centred, of width noise x 512 / L for a sequence of L tokens), SmoothL1 + 0.1 CE at
  every answer entry. EAGLE-3's (`eagle3`): features from three captured layers, training-time test over
  `heads` steps (0.8^i, soft CE), its own head (`own_head`). Held-out tau is the exact tau of EAGLE-2's
  dynamic tree. (`layers` does not apply: one layer.)"""
  noise = 0.2                       # the public `std`: width 0.2 x 512 / L (main.py AddUniformNoise)
  BUDGETS = ((3, 4, 4), (4, 4, 8), (5, 4, 10), (5, 6, 16), (6, 8, 24), (7, 10, 60))   # (depth, top_k, nodes)
  EVAL_POSITIONS = 64               # tree roots per held-out sequence

  @classmethod
  def defaults_for(cls, drafter: str) -> dict:
    """EAGLE-1: weight decay 0.01 (torch AdamW's default, which the public trainer keeps), values clipped
    at 0.5. EAGLE-3 (DeepSpeed's config): no weight decay, the global norm clipped at 0.5, 7 steps, its own head."""
    d = super().defaults_for(drafter)
    if drafter == "eagle3":
      return {**d, "heads": 7, "clip_by": "norm", "own_head": True}
    return {**d, "weight_decay": 0.01}

  @staticmethod
  def host3(c) -> bool:
    """Whether the run trains on EAGLE-3's host (fused captured layers) rather than EAGLE-1's."""
    return c is not None and c.drafter == "eagle3"

  @classmethod
  def capture_for(cls, cfg, c=None) -> tuple:
    """EAGLE-3 reads the low, middle and high layers (`eagle.fuse_layers`); EAGLE-1 the last hidden state only."""
    return eagle.fuse_layers(cfg.layers) if cls.host3(c) else ()

  def __init__(self, target, train, held, c):
    super().__init__(target, train, held, c)
    self.three = self.host3(c)
    if self.three and train.layers is None:
      raise ValueError(f"{c.drafter} on EAGLE-3's host trains on features with captured layers (prepare_data(..., capture=...))")
    if c.targets == "full" and not self.three:
      self.add_full_head()            # EAGLE-1's targets: the full-vocabulary softmax

  def init(self):
    head = np.asarray(self.consts["head_w"]) if self.c.own_head else None      # the target's rows: our choice
    return {k: jnp.asarray(v) for k, v in eagle.initial(self.target, seed=self.c.seed, three=self.three,
                                                        head=head).items()}

  def features(self, p, batch):
    """The draft's step-0 input features [B, L, H]: norm(h) (EAGLE-1) or the fused layers (EAGLE-3)."""
    if self.three:
      return eagle.fuse(self.target.cfg, p, batch["layers"])
    return rms_norm(batch["h"], self.consts["norm_w"], self.target.cfg.norm_eps)

  def _arrays(self, feat, rows, L):
    """h [B, L, H] (EAGLE-1, and EAGLE-3's full targets), layers [B, L, C, H] (EAGLE-3), nxt [B, L], valid [B, L] (entry t:
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
    arrays = {k: jnp.asarray(v) for k, v in out.items()}
    if self.three:
      arrays["layers"] = self.rows(feat, "layers", rows, L)
    if not self.three or self.c.targets == "full":
      arrays["h"] = self.rows(feat, "hidden", rows, L)
    return arrays

  def batch(self, units, step):
    rows = [tuple(self.spans_train[u]) for u in units]
    out = self._arrays(self.train, rows, self.padded(rows))
    if not self.three:                # EAGLE-1's input noise, drawn on the device: half-width 0.1 x 512 / L per sequence
      key = jax.random.fold_in(jax.random.key(self.c.seed), step)
      width = self.noise * 512 / jnp.asarray([e - s for s, e in rows], jnp.float32)
      out["noise"] = (jax.random.uniform(key, out["h"].shape) - 0.5) * width[:, None, None]
    return out

  def loss(self, p, consts, batch):
    if self.three:
      return ttt_loss(self.target.cfg, p, consts, batch, steps=self.c.heads, targets=self.c.targets)
    return loss_fn(self.target.cfg, p, consts, batch, targets=self.c.targets)

  def _eval_fn(self):
    """Jitted once per run: (p, one sequence's arrays, roots r [P]) -> (tokens, parents) of the tree
    grown at each root for every budget, and the teacher-forced top-5 [L, 5] of the draft head."""
    if not self._eval_fns:
      consts, cfg = self.consts, self.target.cfg
      embed = self.embed_fn()

      def f(p, batch, r):
        logp_fn = lambda g: jax.nn.log_softmax(eagle.head_logits(cfg, p, g, consts["head_w"]), -1)
        g, k, v = sequence_outputs(cfg, p, consts["embed"], self.features(p, batch), batch["nxt"])
        P = r.shape[0]
        bc = lambda x: jnp.broadcast_to(x, (P,) + x.shape[1:])
        trees = [eagle.grow(cfg, p, logp_fn, embed, g[0, r - 1], batch["nxt"][0, r - 1], bc(k), bc(v), r, depth=dp,
                         top_k=tk, nodes=n)[:2] for dp, tk, n in self.BUDGETS]
        return trees, jax.lax.top_k(eagle.head_logits(cfg, p, g[0], consts["head_w"]), 5)[1]
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
        acc[b].append(accepted(tok[:len(r)], parent[:len(r)], truth))
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
    cls = eagle.Eagle3 if self.three else eagle.Eagle
    own = {"own_head": int(p["head"].shape[1])} if "head" in p else {}
    d = cls.for_target(self.target, draft_vocab=0 if self.vocab is None else len(self.vocab), **own)
    return d.with_weights({k: np.asarray(v, np.float32) for k, v in p.items()}, self.vocab)


RECIPE = EagleRecipe       # what `specjax train --drafter eagle|eagle3` runs (loop.RECIPES)
