"""What every drafter's training recipe shares: the interface `loop.fit` calls, and the target's frozen
pieces over the reduced draft vocabulary."""
from __future__ import annotations

import jax.numpy as jnp

from specjax.train.data import draft_vocab


class Recipe:
  """What the loop needs from a drafter: `units` to sample batches from, `batch(units, step)`, `init()`,
  `loss(p, consts, batch)`, `summarize(p)` (held-out accuracies and the exact tau of the tree the drafter
  will use) and `drafter(p, summary)`. c: a loop.TrainConfig. Subclasses set `defaults`, the TrainConfig
  fields left None that they fill; clip_by: "norm" or "value"; full: features of the prompts' positions too."""
  clip_by = "norm"
  full = True

  @staticmethod
  def capture_for(cfg, c=None) -> tuple:
    """Target layers whose residuals the features must keep (none: the last hidden state only)."""
    return ()

  def __init__(self, target, train, held, c):
    self.c, self.target, self.train, self.held = c, target, train, held
    model = target.model
    self.vocab, self.coverage, self.index = draft_vocab(train, target.cfg.vocab, c.draft_vocab)
    self.consts = dict(norm_w=model.final_norm[...],
                       head_w=jnp.asarray(model.head_weight(None if self.vocab is None else jnp.asarray(self.vocab)),
                                          jnp.float32))
