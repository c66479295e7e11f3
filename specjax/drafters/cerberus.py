"""Cerberus (Liu, Li, Cui, Yang; arXiv 2410.13344): Medusa-style decoding heads that pass "sequential
knowledge" from head to head, and a gate that decides at each step whether to draft at all.

Heads (drafters/medusa.py's, changed where the paper changes them): on the target's NORMED last hidden state
hn, head i is L ResBlocks; block l of head i reads its own state and the state of head i-1 after the same
block, concatenated:  x_i^{l+1} = x_i^l + SiLU(W_i^l [x_i^l, x_{i-1}^{l+1}] + b_i^l)  (W [2H -> H], zero
initialised as Medusa's, so training starts from Medusa's heads; head 0 reads zeros for its missing
predecessor). The heads still run in one pass from hn (no drafted token feeds back), then the target's
frozen LM head (optionally over a reduced draft vocabulary). Candidates: each head's top-ranked tokens in a
static tree grown from the measured per-head acceptance (Medusa's construction, `medusa.RankTree`).

Entry gate: z = w . hn + a . H8 + b, with H8 the entropy of the target's own top-8 probabilities at the last
accepted position (what training features store, so decoding and training read the same number). A row drafts
when sigmoid(z) >= `gate` (from its second step on: see `propose`); a row that does not proposes nothing beyond
the root (every candidate's parent -1), so its step is a plain autoregressive one. When no row drafts, the heads are not run (lax.cond) and the engine
verifies the root alone (a one-token forward, engine/decode.py `_verify`). `gate=0` always drafts (the heads
alone); a gate above 1 never does. Where the checkpoint recorded what a head-0 hit was worth on its held-out
prompts, each row also weighs the gate's p by what its own drafts have accepted (`drafts`): the gate is calibrated
on the training prompts and over-trusts itself on others (Spec-Bench's translation and summaries, BENCHMARKS.md),
so a row whose drafts keep failing raises its own threshold until it stops drafting.

What follows the paper: heads whose ResBlocks take [own state, previous head's state], the adaptive choice
per step between parallel drafting and an autoregressive step driven by the model's confidence (the paper
gates on an entropy of the last position's prediction). Reconstructed (no public code was found): the exact
block wiring across layers, the gate as a learned logistic classifier over the normed hidden state and the
top-8 entropy rather than a fixed entropy threshold, its label (whether head 0's top-1 is the target's next
token: whether drafting would have been accepted at all; train/cerberus.py), and the tree (Medusa's static
tree; the paper uses Medusa's tree too). Added: the threshold from measured step costs (`gated`) and the
per-row correction by the row's own record (`drafts`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import numerics
from specjax.drafters import medusa
from specjax.protocol import BUDGET, NOT_OPTION, Context, Models, Prefill, Step

TOP = 8        # the target probabilities the gate's entropy reads (train/data.py keeps the same top-8)
GATE = 0.25    # the default threshold (see Cerberus.gate)
# The training calibration's weight in a row's estimate of what a hit is worth, in units of the gate's p summed
# over the row's drafted steps: about one step at p 0.5, so a row whose drafts fail stops after 2-3 of them. At 2
# (about 5 steps) the exploring drafts cost 0.03-0.09x against never drafting on Spec-Bench (BENCHMARKS.md).
PRIOR = 0.5


class CerberusHeads(nnx.Module):
  """w [K, L, 2H, H], b [K, L, H]: the heads' ResBlocks; gate_w [H], gate_ab [2]: the gate's weights on hn and
  on the entropy, and its bias; vocab [N] int32 draft vocabulary (target ids) or [0]."""

  def __init__(self, *, hidden: int, heads: int, layers: int, vocab=None):
    self.w = nnx.Param(jnp.zeros((heads, layers, 2 * hidden, hidden), jnp.float32))
    self.b = nnx.Param(jnp.zeros((heads, layers, hidden), jnp.float32))
    self.gate_w = nnx.Param(jnp.zeros((hidden,), jnp.float32))
    self.gate_ab = nnx.Param(jnp.asarray([0.0, 4.0], jnp.float32))     # untrained: always draft
    self.vocab = nnx.Variable(jnp.asarray(np.zeros(0, np.int32) if vocab is None else vocab, jnp.int32))

  def __call__(self, hn):
    return apply({"w": self.w[...], "b": self.b[...]}, hn)

  def gate(self, hn, ent):
    return gate_logit({"gate_w": self.gate_w[...], "gate_ab": self.gate_ab[...]}, hn, ent)


def apply(p, hn):
  """p {"w", "b"}; hn [..., H] normed target state -> [..., K, H] one state per head. Pure, shared with training."""
  K, L, _, H = p["w"].shape
  prev = [jnp.zeros(hn.shape, jnp.float32)] * L          # head i-1's state after each block (zeros before head 0)
  outs = []
  for k in range(K):
    x = hn.astype(jnp.float32)
    mine = []
    for l in range(L):
      x = x + jax.nn.silu(numerics.dot(jnp.concatenate([x, prev[l]], -1), p["w"][k, l]) + p["b"][k, l])
      mine.append(x)
    prev = mine
    outs.append(x)
  return jnp.stack(outs, -2)


def gate_logit(p, hn, ent):
  """hn [..., H] normed state, ent [...] top-8 entropy -> [...] the gate's logit (draft when sigmoid >= gate)."""
  return numerics.dot(hn.astype(jnp.float32), p["gate_w"]) + p["gate_ab"][0] * ent + p["gate_ab"][1]


def drafts(p, seen, gate, gain):
  """The gate's decision with the row's own record: p [B] the gate's probability that head 0 is right; seen
  [B, 2] (summed p, summed accepted candidates) over the row's drafted steps; gain the tokens a head-0 hit was
  worth at training. A drafted step is expected to add p G tokens, G the row's estimate of a hit's worth
  (gain weighed PRIOR against what its drafts accepted); it drafts when p G >= gate gain, i.e. when p clears
  `gate` rescaled by G / gain. With nothing seen this is p >= gate; a row whose drafts keep failing stops."""
  return p * (PRIOR * gain + seen[:, 1]) >= gate * gain * (PRIOR + seen[:, 0])


def top_entropy(probs):
  """probs [..., TOP] the target's most likely next-token probabilities (not renormalised) -> [...] -sum p log p."""
  p = probs.astype(jnp.float32)
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0), -1)


def logits_entropy(logits):
  """logits [..., V] -> [...] top_entropy of their softmax's top-8."""
  return top_entropy(jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32), -1), TOP)[0])


@dataclasses.dataclass(frozen=True)
class Cerberus(medusa.Medusa):
  # Draft when the gate's probability (that head 0's top-1 is accepted) is at least this: 0 always drafts,
  # above 1 never. Drafting pays when it adds more tokens than the wider verify costs, which depends on the
  # machine: tree_budget="auto" measures both steps and sets it (`gated`); this constant is for fixed budgets.
  gate: float = dataclasses.field(default=GATE, metadata=BUDGET)
  # Held-out share of positions where head 0's top-1 is the target's next token (recorded at training; 0:
  # unknown). With the held-out tau it gives the tokens a hit is worth, which `gated` weighs against cost.
  hit_rate: float = dataclasses.field(default=0.0, metadata=NOT_OPTION)
  name = "cerberus"
  # h, ent, w as Medusa's and the gate's entropy; p [B] the gate's p where the row drafted this step, else -1;
  # seen [B, 2] the row's record over its drafted steps (`drafts`)
  state_axes = {"h": ("batch",), "ent": ("batch",), "w": (), "p": ("batch",), "seen": ("batch",)}

  def validate(self):
    super().validate()
    if self.gate < 0:
      raise ValueError(f"cerberus: gate must be >= 0 (0 always drafts), got {self.gate}")

  def module(self):
    return CerberusHeads(hidden=self.hidden, heads=self.heads, layers=self.layers,
                         vocab=np.zeros(self.draft_vocab, np.int32))

  def gated(self, cost_ratio):
    """The threshold where a draft's expected tokens pay its cost: a step that drafts makes 1 + p G tokens
    for cost_ratio plain steps' time, G = (held-out tau at this budget - 1) / hit_rate the tokens a head-0 hit
    is worth (the gate's p is trained to be that hit's probability), so draft when p >= (cost_ratio - 1) / G.
    Above 1: never (the heads are then skipped, so a step costs what plain decoding's does)."""
    gain = self.gain()
    return None if gain is None else dataclasses.replace(self, gate=round(max(0.0, (cost_ratio - 1) / gain), 4))

  def gain(self):
    """The tokens a head-0 hit was worth on the held-out training prompts, (tau at this budget - 1) / hit_rate;
    None where the checkpoint did not record them (then the gate decides by p alone)."""
    tau = dict((tuple(o.items()), t) for o, t in self.budgets()).get((("nodes", self.nodes),))
    return None if not tau or tau <= 1 or self.hit_rate <= 0 else (tau - 1) / self.hit_rate

  # ---------------------------------------------------------------- decoding
  def init(self, m: Models, ctx: Context, prefill: Prefill):
    state = super().init(m, ctx, prefill)
    # The target's distribution at the last prompt position: one head projection, once.
    B = state["h"].shape[0]
    return dict(state, ent=logits_entropy(m.target.head(state["h"])), p=jnp.full((B,), -1.0, jnp.float32),
                seen=jnp.zeros((B, 2), jnp.float32))

  def propose(self, m: Models, state, ctx: Context):
    p = jax.nn.sigmoid(m.drafter.gate(state["h"], state["ent"]))                         # [B]
    gain = self.gain()
    go = p >= self.gate if gain is None else drafts(p, state["seen"], self.gate, gain)
    # A row's first step reads the token before the root (the prefill stops short of the last prompt token).
    # Checkpoints trained before that row joined training (train/data.FIRST_DRAFT_POS) never saw it: on Spec-Bench
    # the gate's p there was 0.67-0.80 and head 0 wrong on every prompt (BENCHMARKS.md), and that one failed draft
    # was enough to stop a row for good at a cost-set threshold. The gate's entropy input there is the target's
    # near-certain prediction of the template's last token, whatever the answer will be. So a gated row first
    # drafts after its first verify; gate 0 still always drafts.
    if self.gate > 0:
      go = go & (ctx.root >= ctx.prompt_len)
    state = dict(state, p=jnp.where(go, p, -1.0))
    vocab = m.drafter.vocab[...] if self.draft_vocab else None
    T = self.shape.size

    def heads():
      return self.ranked(m.target.head(m.drafter(state["h"]), state["w"]), vocab)

    cand = jax.lax.cond(jnp.any(go), heads, lambda: jnp.zeros((go.shape[0], T - 1), jnp.int32))
    tree = self.shape.draft(jnp.concatenate([ctx.root_token()[:, None], cand], 1))
    # A row the gate stops proposes nothing: no candidate has a parent, so its step is autoregressive.
    return dataclasses.replace(tree, parent=jnp.where(go[:, None], tree.parent, -1)), state

  def update(self, m: Models, state, ctx: Context, step: Step):
    last = step.acceptance.last_node()
    logits = jnp.take_along_axis(step.logits, last[:, None, None], 1)[:, 0]
    # The gate's prediction on a drafted step against what the step accepted: the row's record (`drafts`).
    went = (state["p"] >= 0)[:, None]
    seen = state["seen"] + jnp.where(went, jnp.stack([state["p"], step.acceptance.n.astype(jnp.float32)], -1), 0.0)
    return dict(super().update(m, state, ctx, step), ent=logits_entropy(logits), seen=seen)

  # ---------------------------------------------------------------- construction
  @classmethod
  def untrained(cls, target, *, seed: int = 0, scale: float = 0.5, gate_bias: float = 4.0, **config) -> "Cerberus":
    """Random heads and a random gate, z = w . hn + gate_bias with w . hn about N(0, 1): 4 drafts nearly always,
    0 at about half the steps (for tests: a bad drafter must cost speed, never correctness)."""
    d = cls(hidden=target.cfg.hidden, **config)
    module = CerberusHeads(hidden=d.hidden, heads=d.heads, layers=d.layers,
                           vocab=np.arange(d.draft_vocab) if d.draft_vocab else None)
    rng = np.random.default_rng(seed)
    module.w[...] = jnp.asarray(scale / np.sqrt(2 * d.hidden) * rng.standard_normal(module.w.shape), jnp.float32)
    module.gate_w[...] = jnp.asarray(rng.standard_normal(d.hidden) / np.sqrt(d.hidden), jnp.float32)
    module.gate_ab[...] = jnp.asarray([0.0, gate_bias], jnp.float32)
    return dataclasses.replace(d, params=nnx.state(module))
