"""Self-speculation with a trained exit adapter (LayerSkip-style early exit, with a learned head
instead of re-training the target): the target's first `exit_layer` layers, then a small ResBlock
(x + SiLU(W x + b), Medusa's block, zero-initialised so an untrained adapter is the plain exit head)
on the final-normed state, then the target's LM head, shared, optionally over a reduced draft
vocabulary (the N tokens the target predicts most often in training; `draft_vocab`), mapped back to
target ids. Everything else (the draft cache, chain, siblings, sampled drafts) is `SelfSpec`'s.

Why: without an adapter the exit head at layer K of SmolLM2 rarely agrees with the target (top-1
0.06 at K = 8, BENCHMARKS.md), since the final norm and LM head are tuned for the last layer's
residual. The reduced vocabulary also cuts the draft's LM head (576 x 49152 float32 is 113 MB read
per draft call, as much as 8 decoder layers) to a twelfth at N = 4096.

Trained by `specjax train --drafter early-exit --exit-layer K` (train/early_exit.py);
the shipped checkpoint (if any) is checkpoints/early-exit.safetensors, loaded as "early-exit".
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax.drafters import medusa
from specjax.drafters.draft_model import SelfSpec
from specjax.protocol import NOT_OPTION


@dataclasses.dataclass(frozen=True)
class EarlyExit(SelfSpec):
  """SelfSpec whose exit head has a trained adapter: a one-head `MedusaHeads` module (w [1, L, H, H],
  b [1, L, H], vocab [N]) as the drafter's params."""
  layers: int = dataclasses.field(default=1, metadata=NOT_OPTION)               # ResBlocks in the adapter
  # the target's hidden size (set by the checkpoint / untrained)
  hidden: int = dataclasses.field(default=0, metadata=NOT_OPTION)
  # N most frequent tokens; 0 = the full vocabulary
  draft_vocab: int = dataclasses.field(default=0, metadata=NOT_OPTION)
  name = "early-exit"

  def validate(self):
    super().validate()
    if self.layers < 1 or self.hidden < 1 or self.draft_vocab < 0:
      raise ValueError(f"{self.name}: layers and hidden must be positive, draft_vocab >= 0; "
                       f"got {self.layers}, {self.hidden}, {self.draft_vocab}")

  def module(self):
    return self._module_of(None)

  def _module_of(self, vocab):
    if vocab is None and self.draft_vocab:
      vocab = np.zeros(self.draft_vocab, np.int32)
    return medusa.MedusaHeads(hidden=self.hidden, heads=1, layers=self.layers, vocab=vocab)

  def check_target(self, target):
    super().check_target(target)                  # first: the recorded target, the most telling error
    if self.hidden != target.cfg.hidden:
      raise ValueError(f"{self.name}: adapter for hidden size {self.hidden}, the target has {target.cfg.hidden}")
    if self.params is None:
      raise ValueError(f"{self.name}: no weights; load a checkpoint ('early-exit' or 'early-exit:PATH') or use "
                       "EarlyExit.untrained")

  def _head_state(self, m) -> dict:
    # The draft vocabulary's LM-head columns [H, N], gathered once at init: gathering them on every
    # draft call copied N x H weights (9 MB at N = 4096) per call.
    return {"w": m.target.head_weight(m.drafter.vocab[...])} if self.draft_vocab else {}

  def _logits(self, m, state, x):
    """Last residual [..., H] -> float32 logits [..., V]; outside a draft vocabulary -1e30 (never drafted,
    q = 0 there when sampling, which the ratio test allows)."""
    y = m.drafter(m.target.norm(x))[..., 0, :]
    if not self.draft_vocab:
      return m.target.head(y)
    vocab = m.drafter.vocab[...]
    small = m.target.head(y, state["w"])                                        # [..., N]
    full = jnp.full(small.shape[:-1] + (m.target.cfg.vocab,), -1e30, jnp.float32)
    return full.at[..., vocab].set(small)

  # ---------------------------------------------------------------- construction
  @classmethod
  def untrained(cls, target, *, seed: int = 0, scale: float = 0.5, **config) -> "EarlyExit":
    """A random adapter (for tests: a bad drafter must cost speed, never correctness)."""
    d = cls(hidden=target.cfg.hidden, **config)
    module = d._module_of(np.arange(d.draft_vocab) if d.draft_vocab else None)
    rng = np.random.default_rng(seed)
    module.w[...] = jnp.asarray(scale / np.sqrt(d.hidden) * rng.standard_normal(module.w.shape), jnp.float32)
    return dataclasses.replace(d, params=nnx.state(module))

  def with_weights(self, p: dict, vocab=None) -> "EarlyExit":
    """This configuration with float32 adapter weights p {"w" [1, L, H, H], "b" [1, L, H]}."""
    module = self._module_of(vocab)
    module.w[...] = jnp.asarray(p["w"], jnp.float32)
    module.b[...] = jnp.asarray(p["b"], jnp.float32)
    return dataclasses.replace(self, params=nnx.state(module))
