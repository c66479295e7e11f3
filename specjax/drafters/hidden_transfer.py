"""Hidden Transfer (Wu, Liu, Gong, Wang, Li, Wang, Cai, Zhao, 2024, arXiv 2404.12022): the target drafts for
itself. At an intermediate layer l, trained linear transfers W_1..W_k turn the hidden state h_t of the last
known position into pseudo hidden states of the next k positions, h_t W_i standing in at position t+i;
the pseudo states run through the target's remaining layers [l, L), attending to the real context and to
one another (causally), and the target's own final norm and LM head read tokens off them: the pseudo
state at t+i predicts token t+i+1 (the real state at t already gives t+1). The drafted tokens, arranged as
a tree of each pseudo state's top candidates, are verified with tree attention in the next forward.

What follows the paper: linear transfers at one intermediate layer from the last position's state, pseudo
states through the remaining layers with attention to the context, the frozen target's LM head, trained
so that the remaining layers + head predict the next tokens (train/hidden_transfer.py), tree verification,
lossless. No public code was found (searched 2026-12-05), so these are reconstructed: the transfer form (a
bias-free H x H matrix per step, initialised to the identity), the pseudo states' mutual attention
(causal), the tree (a static one grown from the transfers' measured top-k accuracies by `tree.grow`, as
Medusa's: the paper uses tree attention but its tree is not given here) and the default layer.

How it maps onto the engine, and what it costs: in the paper the pseudo states ride in the SAME forward
that verifies the previous tree. Here they are computed in a separate draft call that reuses the target's
layers [l, L): the verify forward captures the residual entering layer l at every tree node (`capture`),
`update` keeps it at the accepted path, and `propose` runs layers [l, L) once over [accepted path's
residuals; k pseudo states] with the drafter's own KV cache of layers [l, L) (the target's cache is not
handed to drafters): the path's entries are those layers' exact KV for the committed tokens (the same
inputs and weights as the verify), and the pseudo states read them. In the same forward the paper's draft
would have to be made for every node of the tree (which one is accepted is not known inside it), T x k
extra rows in the upper layers, and the engine would need to inject rows at layer l. The separate call
instead reads the upper (L - l) / L of the target's weights a second time per step over 2d + 1 rows
(d + 1 path rows, d pseudo rows; d <= k the tree's depth): on a memory-bound machine about (L - l) / L of a one-token step, on
the 2-core CPUs more (a forward there is compute-bound from a few rows). It also keeps (L - l) / L of the
target's KV cache a second time, and runs layers [l, L) once over the prompt at the start.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import numerics
from specjax.cache import KVCache
from specjax.drafters.medusa import RankTree
from specjax.models.llama import causal_mask
from specjax.protocol import BUDGET, NOT_OPTION, MAX_TREE_NODES, Context, Drafter, Models, Prefill, Step, check_option_types


class TransferMaps(nnx.Module):
  """w [K, H, H]: pseudo state i = h @ w[i]; vocab [N] int32 draft vocabulary (target ids) or [0] for the full one."""

  def __init__(self, *, hidden: int, steps: int, vocab=None):
    self.w = nnx.Param(jnp.broadcast_to(jnp.eye(hidden, dtype=jnp.float32), (steps, hidden, hidden)))
    self.vocab = nnx.Variable(jnp.asarray(np.zeros(0, np.int32) if vocab is None else vocab, jnp.int32))

  def __call__(self, h):
    """h [..., H] residual entering layer l -> [..., K, H] pseudo states."""
    return numerics.einsum("...h,khg->...kg", h.astype(jnp.float32), self.w[...])


def upper_cache(cache: KVCache, start: int) -> KVCache:
  """A cache of layers [start, L) seen as one of all L layers (`Llama.layers` reads layer i at index i; layers
  below `start` are never read, so they alias the first held one)."""
  return KVCache((cache.k[0],) * start + cache.k, (cache.v[0],) * start + cache.v, cache.lengths)


@dataclasses.dataclass(frozen=True)
class HiddenTransfer(RankTree, Drafter):
  transfer_layer: int = 15      # l: the pseudo states enter before layer l (0-based), i.e. after the first l layers
  steps: int = dataclasses.field(default=4, metadata=NOT_OPTION)           # k: transfers (the tree's depth)
  hidden: int = dataclasses.field(default=0, metadata=NOT_OPTION)
  # N most frequent tokens; 0 = the full vocabulary
  draft_vocab: int = dataclasses.field(default=0, metadata=NOT_OPTION)
  # Tree budget: candidate nodes (the root not counted)
  nodes: int = dataclasses.field(default=4, metadata=BUDGET)
  # measured [steps][ranks] acceptance rates (from the checkpoint)
  accuracy: tuple = dataclasses.field(default=(), metadata=NOT_OPTION)
  name = "hidden-transfer"
  budget_keys = ("nodes",)

  def validate(self):
    check_option_types(self)
    for f in ("transfer_layer", "steps", "hidden", "nodes"):
      if getattr(self, f) < 1:
        raise ValueError(f"{self.name}: {f} must be a positive integer, got {getattr(self, f)!r}")
    if self.draft_vocab < 0 or self.nodes >= MAX_TREE_NODES:
      raise ValueError(f"{self.name}: draft_vocab must be >= 0 and nodes below {MAX_TREE_NODES}")

  @property
  def capture(self):
    return (self.transfer_layer - 1,)

  def module(self):
    return TransferMaps(hidden=self.hidden, steps=self.steps, vocab=np.zeros(self.draft_vocab, np.int32))

  @property
  def depths(self) -> int:
    return self.steps

  def check_target(self, target):
    super().check_target(target)
    if self.hidden != target.cfg.hidden:
      raise ValueError(f"{self.name}: transfers of hidden size {self.hidden} do not fit a target of hidden size "
                       f"{target.cfg.hidden}")
    if not self.transfer_layer < target.cfg.layers:
      raise ValueError(f"{self.name}: transfer_layer {self.transfer_layer} must be below the target's "
                       f"{target.cfg.layers} layers")
    if self.params is None:
      raise ValueError(f"{self.name}: no weights; load a checkpoint ('{self.name}:PATH') or use HiddenTransfer.untrained")

  # ---------------------------------------------------------------- decoding
  def init(self, m: Models, ctx: Context, prefill: Prefill):
    """State: cache, the drafter's KV of layers [l, L) (committed positions below root - n); path [B, P, H]
    the residuals entering layer l of the last accepted path (the first n of them), whose upper KV the next
    draft call writes; src [B, H] the one at the last committed position before the root; w the reduced head."""
    cfg = m.target.cfg
    l = self.transfer_layer
    x = prefill.layer_hidden[l - 1]                                               # [B, P-1, H]
    B, n, H = x.shape
    S = ctx.tokens.shape[1]
    cache = KVCache.zeros(layers=cfg.layers - l, batch=B, max_len=S, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim)
    _, k, v, _ = m.target.layers(x, jnp.broadcast_to(jnp.arange(n), (B, n)), None, causal_mask(B, n), start=l)
    src = jnp.take_along_axis(x, jnp.clip(ctx.prompt_len - 2, 0, n - 1)[:, None, None], 1)[:, 0]
    w = m.target.head_weight(m.drafter.vocab[...]) if self.draft_vocab else None
    return dict(cache=cache.write(k, v), path=jnp.zeros((B, self.max_depth + 1, H), jnp.float32),
                n=jnp.zeros(B, jnp.int32), src=src, w=w)

  def propose(self, m: Models, state, ctx: Context):
    l, D = self.transfer_layer, self.max_depth
    path, n = state["path"], state["n"]
    B, P, _ = path.shape
    # rows: the path's P = D + 1 slots (the first n real), then the pseudo states at root .. root + D - 1 (only
    # the tree's depth of them: a budget whose tree is shallower than `steps` leaves the deeper transfers unused)
    x = jnp.concatenate([path, m.drafter(state["src"])[:, :D]], 1)               # [B, P + D, H]
    first = ctx.root - n
    pos = jnp.concatenate([first[:, None] + jnp.arange(P)[None], ctx.root[:, None] + jnp.arange(D)[None]], 1)
    real = jnp.concatenate([jnp.arange(P)[None] < n[:, None], jnp.ones((B, D), bool)], 1)
    T = P + D
    mask = jnp.tril(jnp.ones((T, T), bool))[None] & (real[:, None, :] | jnp.eye(T, dtype=bool)[None])
    cache = dataclasses.replace(state["cache"], lengths=first)
    y, k, v, _ = m.target.layers(x, pos, upper_cache(cache, l), mask, start=l)
    cache = cache.write(k[:, :, :P], v[:, :, :P])                   # the path's exact upper KV; pseudo rows dropped
    logits = m.target.head(m.target.norm(y[:, P:]), state["w"])                   # [B, D, N]
    tree = self.candidates(ctx.root_token(), logits, m.drafter.vocab[...] if self.draft_vocab else None)
    return tree, dict(state, cache=cache)

  def update(self, m: Models, state, ctx: Context, step: Step):
    acc = step.acceptance
    h = step.layer_hidden[self.transfer_layer - 1]                                # [B, T, H]
    path = jnp.take_along_axis(h, acc.path[:, :, None], 1)                        # [B, D+1, H]
    src = jnp.take_along_axis(h, acc.last_node()[:, None, None], 1)[:, 0]
    return dict(state, path=path, n=jnp.minimum(acc.n + 1, step.committed), src=src)

  # ---------------------------------------------------------------- construction
  @classmethod
  def untrained(cls, target, *, seed: int = 0, scale: float = 0.5, **config) -> "HiddenTransfer":
    """Identity transfers plus noise (for tests: a bad drafter must cost speed, never correctness)."""
    d = cls(hidden=target.cfg.hidden, **config)
    rng = np.random.default_rng(seed)
    w = np.eye(d.hidden)[None] + scale / np.sqrt(d.hidden) * rng.standard_normal((d.steps, d.hidden, d.hidden))
    return d.with_weights(w, np.arange(d.draft_vocab) if d.draft_vocab else None)

  def with_weights(self, w, vocab=None) -> "HiddenTransfer":
    """This configuration with float32 transfers w [K, H, H] and the draft vocabulary `vocab` [N]."""
    module = TransferMaps(hidden=self.hidden, steps=self.steps, vocab=vocab if self.draft_vocab else None)
    module.w[...] = jnp.asarray(w, jnp.float32)
    return dataclasses.replace(self, params=nnx.state(module))
