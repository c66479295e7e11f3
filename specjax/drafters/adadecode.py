"""AdaDecode (Wei, Chen, Zhu, Meng, ICML 2025, arXiv 2506.03700): a lightweight LM head at an intermediate
layer of the target; when it is confident, the token is emitted after those layers only and the next token
starts at once, while the deeper layers the early token skipped are computed later, together with the next
tokens' forward (so their KV is exact), and the early tokens are verified against the final layer's
prediction: output identical to standard decoding.

What follows the paper: the target's own first `exit_layer` layers, a trained lightweight head there
(trained to predict the final layer's token, i.e. against the target's own distribution), a confidence
threshold on the early head's top-1 probability that decides per token whether to emit early, early tokens
verified against the full model, lossless. What was reconstructed: the authors' repository
(weizhepei/AdaDecode) holds only a README ("codebase will be released soon", checked 2026-12-05), so the
head's form, the number of head layers and the threshold's choice are ours. The head is the early-exit
adapter (drafters/early_exit.py: a zero-initialised ResBlock on the final-normed residual, then the target's
own LM head, optionally over a reduced vocabulary); the threshold is calibrated by train/adadecode.py on
held-out text; the paper's heads at several layers (exit at the first confident one) are ONE head here: in
a batch with static shapes, rows exiting at different layers leave the shallower rows' deeper KV missing
for their next token (what AdaDecode's deferred computation fills), so several exits would need every
draft call to run to the deepest head anyway. Unfinished: several exit layers.

How it maps onto the engine (draft, then verify): the "early emission" is a draft call over the target's
first `exit_layer` layers (the self-speculation cache of SelfSpec) plus the head; while the head stays
confident (p_top1 >= threshold) the next token is drafted at once, up to `gamma` tokens; a
`lax.while_loop` stops as soon as no row of the batch is confident, so an unconfident step costs one draft
call. The "deferred layers computed in parallel with the next tokens" are the engine's verify forward over
the confident chain: all drafted tokens and the root go through the target in one forward, and greedy
(or lossless sampled) acceptance is the paper's verification. The differences in cost: the verify forward
recomputes the first `exit_layer` layers of the drafted tokens (the engine always starts at the
embedding; AdaDecode reuses them), and the drafter keeps its own KV of those layers (the target's cache is
not handed to drafters, draft_model.py explains why). Nodes after a row's first unconfident token are not
candidates (parent -1); a step where no row is confident runs a one-token verify (`skip_empty_trees`).

Candidates are deterministic (the head's top-1), so sampled acceptance stays lossless (q one-hot).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specjax.drafters.draft_model import _take
from specjax.drafters.early_exit import EarlyExit
from specjax.models.llama import causal_mask
from specjax.protocol import BUDGET, NOT_OPTION, DraftTree


@dataclasses.dataclass(frozen=True)
class AdaDecode(EarlyExit):
  """EarlyExit's draft network and head, drafting a chain only while the head is confident. `gamma`: the
  longest chain; `threshold`: the confidence to emit early (None: the one training calibrated)."""
  # calibrated on held-out text by train/adadecode.py (stored with the weights)
  calibrated: float = dataclasses.field(default=0.5, metadata=NOT_OPTION)
  threshold: float | None = dataclasses.field(default=None, metadata=BUDGET)
  name = "adadecode"

  def validate(self):
    super().validate()
    t = self.confidence
    if not 0.0 <= t <= 1.0:
      raise ValueError(f"{self.name}: threshold must be in [0, 1], got {t}")
    if self.width != 1 or self.temperature != 0:
      raise ValueError(f"{self.name}: drafts the early head's top-1 chain; width must be 1 and temperature 0")

  @property
  def confidence(self) -> float:
    return self.calibrated if self.threshold is None else self.threshold

  def propose(self, m, state, ctx):
    B, S = ctx.tokens.shape
    G = self.gamma
    root = ctx.root
    # Recompute the entry before the root (it may never have been drafted) and the root, as SelfSpec does.
    start = jnp.maximum(root - 1, 0)
    pos = start[:, None] + jnp.arange(2)[None]
    tok = jnp.take_along_axis(ctx.tokens, jnp.minimum(pos, S - 1), 1)
    cache = dataclasses.replace(state["cache"], lengths=start)
    x, k, v = self._run(m, tok, pos, cache, causal_mask(B, 2))
    cache = cache.write(k, v)
    logits = self._logits(m, state, _take(x, (root - start)[:, None])[:, 0])        # [B, V]

    def more(c):
      d, _, live, _, _ = c
      return (d < G) & jnp.any(live)

    def body(c):
      d, cache, live, logits, drafted = c
      p = jax.nn.softmax(logits, -1)
      t = jnp.argmax(logits, -1).astype(jnp.int32)
      live = live & (jnp.max(p, -1) >= self.confidence)
      drafted = jax.lax.dynamic_update_slice_in_dim(drafted, jnp.where(live, t, -1)[:, None], d, 1)
      # The next token's early layers only when some row goes on (an unconfident step costs one call).
      logits, cache = jax.lax.cond((d + 1 < G) & jnp.any(live),
                                   lambda: self._step(m, state, cache, t, root + d + 1), lambda: (logits, cache))
      return d + 1, cache, live, logits, drafted

    init = (jnp.int32(0), cache, ~ctx.done, logits, jnp.full((B, G), -1, jnp.int32))
    _, cache, _, _, drafted = jax.lax.while_loop(more, body, init)
    tree = self.shape.draft(jnp.concatenate([ctx.root_token()[:, None], jnp.maximum(drafted, 0)], 1))
    parent = jnp.where(jnp.concatenate([jnp.ones((B, 1), bool), drafted >= 0], 1), tree.parent, -1)
    return DraftTree(tree.tokens, parent, tree.depth, tree.mask, None, self.max_depth), dict(state, cache=cache)
