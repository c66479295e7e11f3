"""Medusa (Cai et al., ICML 2024; FasterDecoding/Medusa): K extra decoding heads on the target's last
hidden state. At the last accepted position t the target's own head gave the next token (the tree's
root); head k (0-based) predicts the token after that by k+1 places. Each head is ResBlock x layers
(x + SiLU(W x + b); W and b zero-initialised, where Medusa zeroes W and keeps torch's default b) followed
by the target's frozen LM head, shared rather than copied (a copy would be 28M parameters a head for SmolLM2's 49152 x 576), and
optionally restricted to a reduced draft vocabulary (the N most frequent target predictions of the
training data), mapped back to target ids. Verification always uses the full vocabulary.

Candidates: the top-k of each head arranged in a static tree grown from the heads' measured top-k
accuracies (`tree.grow`, the accuracy table stored with the checkpoint), so the node budget can be
changed at generate time. With sampling the candidates are deterministic (q one-hot) and the
engine's recursive rejection keeps the target's distribution exactly.

Hidden state: the heads read the NORMED last hidden state, `target.norm(hidden)` (what Medusa's
trainer reads from Hugging Face's model output), both in training and in decoding.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import numerics
from specjax.engine import tree as tree_lib
from specjax.protocol import (BUDGET, NOT_OPTION, MAX_TREE_NODES, Context, Drafter, Models, Prefill, Step,
                              check_option_types)


class MedusaHeads(nnx.Module):
  """w [K, L, H, H], b [K, L, H]: ResBlock weights of K heads x L layers; vocab [N] int32 draft
  vocabulary (target ids) or [0] for the full vocabulary."""

  def __init__(self, *, hidden: int, heads: int, layers: int, vocab=None):
    self.w = nnx.Param(jnp.zeros((heads, layers, hidden, hidden), jnp.float32))
    self.b = nnx.Param(jnp.zeros((heads, layers, hidden), jnp.float32))
    self.vocab = nnx.Variable(jnp.asarray(np.zeros(0, np.int32) if vocab is None else vocab, jnp.int32))

  def __call__(self, hn):
    return apply({"w": self.w[...], "b": self.b[...]}, hn)


def apply(p, hn):
  """p {"w", "b"} (see MedusaHeads); hn [..., H] normed target state -> [..., K, H] one state per head,
  for the LM head. A pure function of the weights, shared by decoding and training."""
  K, L, H, _ = p["w"].shape
  x = jnp.broadcast_to(hn[..., None, :], hn.shape[:-1] + (K, H)).astype(jnp.float32)
  for l in range(L):
    x = x + jax.nn.silu(numerics.einsum("...kh,khg->...kg", x, p["w"][:, l]) + p["b"][:, l])
  return x


def _prior(heads: int, ranks: int) -> np.ndarray:
  """Acceptance table for heads without measurements: decays with depth and rank."""
  return 0.6 * (0.75 ** np.arange(heads))[:, None] * (0.5 ** np.arange(ranks))[None, :]


class RankTree:
  """For drafters whose candidates at depth d are the top-ranked tokens of one distribution per depth
  (the parallel heads of Medusa and Cerberus, ParallelSpec's masks, Hidden Transfer's pseudo states): each
  depth is scored once, whatever the tokens before it, and the candidates are arranged by a static tree
  grown from the measured [depths][ranks] acceptance table `accuracy` (a prior without one) under the
  budget `nodes`. Subclasses define `depths`, `accuracy` and `nodes`."""

  @functools.cached_property
  def shape(self) -> tree_lib.StaticTree:
    table = np.asarray(self.accuracy, np.float64) if self.accuracy else _prior(self.depths, 10)
    return tree_lib.grow(table[:self.depths], self.nodes)

  @property
  def num_nodes(self):
    return self.shape.size

  @property
  def max_depth(self):
    return self.shape.max_depth

  def ranked(self, logits, vocab=None):
    """logits [B, depths, N] -> the candidate nodes' tokens [B, T-1]: node c (a rank path) takes the
    c[-1]-th best of depth len(c) - 1. vocab [N]: draft index -> target id (None: the full vocabulary)."""
    choices = self.shape.choices
    top = jax.lax.top_k(logits, 1 + max(c[-1] for c in choices))[1]                  # [B, depths, kmax]
    if vocab is not None:
      top = vocab[top]
    return top[:, np.array([len(c) - 1 for c in choices]), np.array([c[-1] for c in choices])]

  def candidates(self, root, logits, vocab=None):
    """root [B] the tree's root tokens; logits [B, depths, N] -> the draft tree of the top-ranked tokens."""
    return self.shape.draft(jnp.concatenate([root[:, None], self.ranked(logits, vocab)], 1))


@dataclasses.dataclass(frozen=True)
class Medusa(RankTree, Drafter):
  heads: int = dataclasses.field(default=4, metadata=NOT_OPTION)
  layers: int = dataclasses.field(default=1, metadata=NOT_OPTION)
  hidden: int = dataclasses.field(default=576, metadata=NOT_OPTION)
  # N most frequent tokens; 0 = the full vocabulary
  draft_vocab: int = dataclasses.field(default=0, metadata=NOT_OPTION)
  # Tree budget: candidate nodes (the root not counted). 4 is the CPU default: on the 2-core Xeon a
  # 5-node verify costs 1.18x a one-token step and a 13-node one 1.48x, while held-out tau only grows
  # from 2.02 to 2.36, so 4 nodes gives the most tokens per second (BENCHMARKS.md). Accelerators,
  # where a wide verify is nearly free, want 16-64.
  nodes: int = dataclasses.field(default=4, metadata=BUDGET)
  # measured [heads][ranks] acceptance rates (from the checkpoint)
  accuracy: tuple = dataclasses.field(default=(), metadata=NOT_OPTION)
  name = "medusa"
  state_axes = {"h": ("batch",), "w": ()}     # h [B, H]; w [H, N] head columns
  budget_keys = ("nodes",)

  def validate(self):
    check_option_types(self)
    for f in ("heads", "layers", "hidden", "nodes"):
      if getattr(self, f) < 1:
        raise ValueError(f"medusa: {f} must be a positive integer, got {getattr(self, f)!r}")
    if self.nodes >= MAX_TREE_NODES:
      raise ValueError(f"medusa: nodes must be below {MAX_TREE_NODES}, got {self.nodes}")

  def module(self):
    return MedusaHeads(hidden=self.hidden, heads=self.heads, layers=self.layers,
                       vocab=np.zeros(self.draft_vocab, np.int32))

  @property
  def depths(self) -> int:
    return self.heads

  def check_target(self, target):
    super().check_target(target)
    if self.hidden != target.cfg.hidden:
      raise ValueError(f"medusa: heads of hidden size {self.hidden} do not fit a target of hidden size {target.cfg.hidden}")
    if self.params is None:
      raise ValueError("medusa: no weights; load a checkpoint (drafter='medusa' or 'medusa:PATH') or use Medusa.untrained")

  # ---------------------------------------------------------------- decoding
  def init(self, m: Models, ctx: Context, prefill: Prefill):
    idx = jnp.clip(ctx.prompt_len - 2, 0, prefill.hidden.shape[1] - 1)
    h = jnp.take_along_axis(prefill.hidden, idx[:, None, None], 1)[:, 0]
    # The reduced head's columns are gathered once, outside the loop.
    w = m.target.head_weight(m.drafter.vocab[...]) if self.draft_vocab else None
    return dict(h=m.target.norm(h), w=w)

  def propose(self, m: Models, state, ctx: Context):
    x = m.drafter(state["h"])                                                   # [B, K, H]
    logits = m.target.head(x, state["w"])                                       # [B, K, N]
    return self.candidates(ctx.root_token(), logits, m.drafter.vocab[...] if self.draft_vocab else None), state

  def update(self, m: Models, state, ctx: Context, step: Step):
    last = step.acceptance.last_node()
    h = jnp.take_along_axis(step.hidden, last[:, None, None], 1)[:, 0]
    return dict(state, h=m.target.norm(h))

  # ---------------------------------------------------------------- construction
  @classmethod
  def untrained(cls, target, *, seed: int = 0, scale: float = 0.5, **config) -> "Medusa":
    """Random heads (for tests: a bad drafter must cost speed, never correctness)."""
    d = cls(hidden=target.cfg.hidden, **config)
    module = MedusaHeads(hidden=d.hidden, heads=d.heads, layers=d.layers,
                         vocab=np.arange(d.draft_vocab) if d.draft_vocab else None)
    rng = np.random.default_rng(seed)
    module.w[...] = jnp.asarray(scale / np.sqrt(d.hidden) * rng.standard_normal(module.w.shape), jnp.float32)
    return dataclasses.replace(d, params=nnx.state(module))
