"""Medusa's training (drafters/medusa.py decodes): the heads' labels and loss, the label ranks held-out
evaluation grows the static tree from, and the recipe `loop.fit` runs (single positions: a batch is
`batch` positions of the last hidden state: the answer's and the first step's, data.FIRST_DRAFT_POS)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import numerics
from specjax.drafters import medusa
from specjax.engine import tree as tree_lib
from specjax.models.llama import rms_norm
from specjax.train import data
from specjax.train.recipe import Recipe

KMAX = 10   # ranks measured per head (a tree never uses more siblings than this)


def labels(feat, heads: int) -> np.ndarray:
  """[N, K] target ids head k must predict at each position (-1 where the sequence ends first):
  the target's own top-1 prediction at position i+k+1 (for self-distilled text, the next-but-k token)."""
  out = np.full((len(feat), heads), -1, np.int32)
  top1 = feat.top_ids[:, 0]
  n = len(feat)
  for k in range(heads):
    ok = feat.valid_ahead(k + 1)
    out[ok, k] = top1[np.minimum(np.arange(n) + k + 1, n - 1)][ok]
  return out


def head_logits(p, norm_w, head_w, h, *, eps: float, apply=medusa.apply):
  """h [b, H] last residual (normed here, as in decoding) -> every head's float32 logits [b, K, N].
  apply: the heads (p, hn [b, H]) -> [b, K, H]; Medusa's, or another method's parallel heads (Cerberus)."""
  return numerics.dot(apply(p, rms_norm(h.astype(jnp.float32), norm_w, eps)), head_w,
                      preferred_element_type=jnp.float32)


def loss_fn(p, norm_w, head_w, h, lab, *, eps: float, decay: float = 0.8, apply=medusa.apply, logits=None):
  """Cross-entropy of every head against its label, weighted decay^k. h [b, H] last residual;
  lab [b, K] indices into the head's vocabulary (-1: no label); logits: the heads' [b, K, N] when the caller
  has them (else computed with `apply`). Returns (loss, top-1 accuracy per head [K])."""
  if logits is None:
    logits = head_logits(p, norm_w, head_w, h, eps=eps, apply=apply)               # [b, K, N]
  valid = lab >= 0
  logp = jax.nn.log_softmax(logits, -1)
  nll = -jnp.take_along_axis(logp, jnp.maximum(lab, 0)[..., None], -1)[..., 0]
  per_head = jnp.sum(jnp.where(valid, nll, 0.0), 0) / jnp.maximum(valid.sum(0), 1)
  K = lab.shape[1]
  loss = jnp.sum(per_head * decay ** jnp.arange(K))
  acc = jnp.sum(valid & (jnp.argmax(logits, -1) == lab), 0) / jnp.maximum(valid.sum(0), 1)
  return loss, acc


def ranks(p, norm_w, head_w, h, lab, *, eps: float, kmax: int, apply=medusa.apply):
  """[b, K] rank of each label among its head's top-kmax (kmax where absent or no label)."""
  top = jax.lax.top_k(head_logits(p, norm_w, head_w, h, eps=eps, apply=apply), kmax)[1]
  hit = top == lab[..., None]
  return jnp.where(jnp.any(hit, -1) & (lab >= 0), jnp.argmax(hit, -1), kmax)


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


class MedusaRecipe(Recipe):
  """Medusa's heads, trained at single answer positions (a batch: `batch` positions)."""
  defaults = dict(batch=256, clip=1.0, b2=0.999)

  def __init__(self, target, train, held, c):
    super().__init__(target, train, held, c)
    self.eps = target.cfg.norm_eps
    self.lab_train, self.lab_held = self.labels(train), self.labels(held)
    # Rows the heads read when decoding (data.FIRST_DRAFT_POS on; early-exit's features start at pos 0).
    self.pos_train = np.flatnonzero((self.lab_train[:, 0] >= 0) & (train.pos >= data.FIRST_DRAFT_POS))
    pos_held = np.flatnonzero((self.lab_held[:, 0] >= 0) & (held.pos >= data.FIRST_DRAFT_POS))
    if len(self.pos_train) < c.batch:
      raise ValueError(f"only {len(self.pos_train)} training positions, fewer than a batch of {c.batch}")
    rng = np.random.default_rng(c.seed)
    self.ev_held = np.sort(rng.choice(pos_held, min(len(pos_held), c.eval_positions), replace=False))
    self.ev_train = np.sort(rng.choice(self.pos_train, min(len(self.pos_train), c.eval_positions), replace=False))
    self.units = len(self.pos_train)
    self._rank_fn = jax.jit(self.ranks)           # one compile for every evaluation of the run

  def labels(self, feat):
    lab = labels(feat, self.c.heads)
    return np.where(lab >= 0, self.index[np.maximum(lab, 0)], -1)

  def batch(self, units, step):
    idx = self.pos_train[units]
    return {"h": jnp.asarray(np.asarray(self.train.hidden[idx], np.float32)), "lab": jnp.asarray(self.lab_train[idx])}

  def init(self):
    H = self.target.cfg.hidden
    return {"w": jnp.zeros((self.c.heads, self.c.layers, H, H)), "b": jnp.zeros((self.c.heads, self.c.layers, H))}

  def loss(self, p, consts, batch):
    return loss_fn(p, consts["norm_w"], consts["head_w"], batch["h"], batch["lab"], eps=self.eps)

  def ranks(self, p, consts, h, lab):
    return ranks(p, consts["norm_w"], consts["head_w"], h, lab, eps=self.eps, kmax=KMAX)

  def summarize(self, p):
    return summarize(evaluate(self._rank_fn, p, self.consts, self.held, self.lab_held, self.ev_held),
                     evaluate(self._rank_fn, p, self.consts, self.train, self.lab_train, self.ev_train), self.c.nodes)

  DRAFTER, HEADS = medusa.Medusa, medusa.MedusaHeads          # Cerberus: its own drafter and heads module

  def drafter(self, p, summary):
    c = self.c
    d = self.DRAFTER(heads=c.heads, layers=c.layers, hidden=self.target.cfg.hidden,
                     draft_vocab=0 if self.vocab is None else len(self.vocab), nodes=c.nodes,
                     accuracy=tuple(tuple(round(float(x), 4) for x in row) for row in summary["table"]))
    module = self.HEADS(hidden=d.hidden, heads=d.heads, layers=d.layers, vocab=self.vocab)
    for k, v in p.items():                          # every trained weight (Cerberus: the gate's too)
      getattr(module, k)[...] = jnp.asarray(v, jnp.float32)
    return dataclasses.replace(d, params=nnx.state(module))


RECIPE = MedusaRecipe       # what `specjax train --drafter medusa` runs (loop.RECIPES)
