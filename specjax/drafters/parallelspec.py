"""ParallelSpec (Xiao, Zhang, Ge, Ouyang, Ordonez, Yu; arXiv 2410.05589) on EAGLE's framework: a one-layer
drafter that drafts k future tokens in ONE forward, from k-1 learned [MASK] entries appended after the
committed sequence, instead of EAGLE's k sequential draft-layer calls.

Draft model (EAGLE-1's, drafters/eagle.py: entry t reads fc([e(x_{t+1}), f_t]) with f_t = norm(h_t) the
target's normed feature, one decoder layer like the target's, the target's frozen LM head):
    real entry t          as EAGLE's; its output g_t scores x_{t+2}
    mask entry j (1..k-1) after real entry t: input fc([m_j, s]) with m_j a learned [MASK]_j embedding and s
                          a learned feature shared by every mask; rope position t + j; it sees the real
                          entries up to t and the masks 1..j of its own group; its output scores x_{t+2+j}
So the entry of the last committed token's predecessor (t = root - 1) and its k-1 masks give the
distributions of depths 1..k of the next tree, all from one layer call.
On EAGLE-3's host (`fuse`, `own_head`; trained with `--own-head`): f_t is EAGLE-3's fused feature of three
captured target layers, the output is normed before its own draft-vocabulary head (drafters/eagle.py Eagle3);
the masks and the one call a step are unchanged.

One forward a step: `update` runs the draft layer once over [the accepted path's entries + the k-1 masks]
(the masks see only the entries the step committed, per row, and the draft cache before them); the real
entries join the draft cache (EAGLE's, never rolled back), the masks never do. `propose` calls no layer: it
scores the k stored outputs with the head and drafts a static rank tree (Medusa's construction: per-depth
top-ranked tokens, the tree grown best-first from the per-depth acceptance rates measured at training,
`nodes` candidates; a prior when nothing was measured). Candidates are deterministic (q one-hot), so
sampling stays lossless through the engine's recursive rejection.

What follows the paper: k-1 appended [MASK]_1..[MASK]_{k-1} learned tokens predicting k tokens in one
forward, the attention pattern in which the masks of one group see the prefix and the earlier masks of their
group (no mask sees another group), group-wise parallel training (train/parallelspec.py), EAGLE as the host
framework and distillation from the target's distributions. Reconstructed (the paper gives no code and no
detail of these; none is public): the mask entries' feature half (a learned shared vector, as P-EAGLE later
does; the paper does not say what EAGLE's feature input is at a mask), masks causal within a group (mask j
sees masks < j), k-1 masks for k depths (the real entry gives depth 1), the tree (the paper uses EAGLE's
dynamic tree; here a static tree from measured per-depth ranks, since the k distributions do not depend on the
drafted tokens), and the loss weights (train/parallelspec.py). Not the paper's: the host. Its drafter is
EAGLE-1's layer; ours defaults to EAGLE-3's (fused layers, its own head, cross-entropy), which on the same data
and steps lifted held-out tau at 4 nodes from 1.39 to 1.54 (BENCHMARKS, issue 24); `fuse=()` keeps EAGLE-1's.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specjax.cache import put_rows
from specjax.drafters import eagle, flat
from specjax.drafters.medusa import RankTree
from specjax.protocol import (BUDGET, NOT_OPTION, MAX_TREE_NODES, Context, Models, Prefill, Step,
                              check_option_types)


# ------------------------------------------------------------------ weights

def shapes(dims: tuple, depth: int, *, three: bool = False, own_head: int = 0) -> dict[str, tuple[int, ...]]:
  """The host's weights (EAGLE-1's eagle.shapes, or with three EAGLE-3's eagle.shapes3: fuse/w, norm and
  its own head [H, own_head]) plus mask/e [k-1, H] the [MASK]_j embeddings and mask/f [H] their shared feature."""
  H = dims[0]
  host = eagle.shapes3(dims, own_head) if three else eagle.shapes(dims)
  return {**host, "mask/e": (depth - 1, H), "mask/f": (H,)}


def initial(target, depth: int, *, seed: int = 0, noise: float = 0.01, three: bool = False, head=None) -> dict:
  """The host's starting weights (eagle.initial; three and head as there); the mask embeddings at the
  scale of the target's token embeddings (normal, its RMS), their shared feature 0."""
  out = eagle.initial(target, seed=seed, noise=noise, three=three, head=head)
  emb = np.asarray(target.model.embed[...], np.float32)
  rms = float(np.sqrt(np.mean(emb * emb)))
  rng = np.random.default_rng([seed, 1])
  out["mask/e"] = (rms * rng.standard_normal((depth - 1, emb.shape[1]))).astype(np.float32)
  out["mask/f"] = np.zeros(emb.shape[1], np.float32)
  return out


# ------------------------------------------------------------------ pure functions (decoding and training)

def mask_inputs(p):
  """[k-1, H] the layer inputs of the mask entries: fc([m_j, s])."""
  e = p["mask/e"]
  return eagle.draft_inputs(p, e, jnp.broadcast_to(p["mask/f"], e.shape))


def layer(cfg, p, x, positions, mask, kv=None, live=None):
  """The draft layer over layer inputs x [B, T, H] (see flat.run_layer). Returns (g, k, v)."""
  return flat.run_layer(cfg, flat.layer_weights(p, "layer", 0), x, positions, mask, kv, live)


def with_masks(cfg, p, e, f, positions, n, kv=None, live=None):
  """One forward over T real entries and one group of k-1 masks after each row's entry n-1.

  e, f [B, T, H] embeddings of x_{t+1} and features f_t, positions [B, T], causal among themselves; n [B]
  the real entries the masks see (entries at or past n, e.g. a rejected draft's, are invisible to them);
  kv, live [B, S]: earlier entries (the draft cache) and which of them every entry sees.
  Returns (g [B, T, H] real outputs, gm [B, k-1, H] mask outputs, k, v [B, T, KVH, D] real keys/values)."""
  B, T, _ = e.shape
  xm = mask_inputs(p)
  M = xm.shape[0]
  last = jnp.take_along_axis(positions, jnp.clip(n - 1, 0, T - 1)[:, None], 1)               # [B, 1]
  pos = jnp.concatenate([positions, last + 1 + jnp.arange(M)[None]], 1)
  x = jnp.concatenate([eagle.draft_inputs(p, e, f), jnp.broadcast_to(xm, (B, M, xm.shape[1]))], 1)
  sees_real = jnp.broadcast_to(jnp.arange(T)[None, None] < n[:, None, None], (B, M, T))
  mask = jnp.concatenate([jnp.concatenate([eagle.causal(B, T), jnp.zeros((B, T, M), bool)], 2),
                          jnp.concatenate([sees_real, eagle.causal(B, M)], 2)], 1)
  wide = None if live is None else jnp.broadcast_to(live[:, None], (B, T + M, live.shape[1]))
  g, k, v = layer(cfg, p, x, pos, mask, kv, wide)
  return g[:, :T], g[:, T:], k[:, :T], v[:, :T]


def groups(cfg, p, embed_w, f, nxt, sel):
  """Group-wise parallel training's forward: the real entries over whole sequences (causal) and, after
  each anchor entry sel [B, P], its group of k-1 masks (rope positions anchor + j; each sees the real
  entries up to its anchor and its own group's masks up to itself), all in ONE layer call.
  f [B, L, H] features, nxt [B, L]. Returns (g [B, L, H], gm [B, P, k-1, H]): g_t scores x_{t+2}, mask j
  of anchor t scores x_{t+2+j}."""
  B, L, _ = f.shape
  P = sel.shape[1]
  xm = mask_inputs(p)
  M, H = xm.shape
  grp, j = np.arange(P * M) // M, np.arange(P * M) % M
  pos = jnp.concatenate([jnp.broadcast_to(jnp.arange(L), (B, L)), (sel[:, grp] + 1 + j[None])], 1)
  x = jnp.concatenate([eagle.draft_inputs(p, embed_w[nxt], f), jnp.broadcast_to(jnp.tile(xm, (P, 1)), (B, P * M, H))], 1)
  sees_real = jnp.arange(L)[None, None] <= sel[:, grp][..., None]                            # [B, PM, L]
  own = jnp.asarray((grp[:, None] == grp[None, :]) & (j[None, :] <= j[:, None]))
  mask = jnp.concatenate([jnp.concatenate([eagle.causal(B, L), jnp.zeros((B, L, P * M), bool)], 2),
                          jnp.concatenate([sees_real, jnp.broadcast_to(own, (B, P * M, P * M))], 2)], 1)
  g, _, _ = layer(cfg, p, x, pos, mask)
  return g[:, :L], g[:, L:].reshape(B, P, M, H)


# ------------------------------------------------------------------ the drafter

@dataclasses.dataclass(frozen=True)
class ParallelSpec(RankTree, flat.FlatDrafter):
  # k: tokens drafted in parallel (tree depth), the last real entry and k-1 masks (weights depend on it)
  depth: int = dataclasses.field(default=4, metadata=NOT_OPTION)
  # Tree budget: candidate nodes (the root not counted); 4 as EAGLE's and Medusa's CPU defaults (a 5-node
  # verify costs about 1.2x a one-token step on the 2-core CPUs); accelerators want 16-64.
  nodes: int = dataclasses.field(default=4, metadata=BUDGET)
  # measured [depth][rank] acceptance rates (from the checkpoint)
  accuracy: tuple = dataclasses.field(default=(), metadata=NOT_OPTION)
  # the host: three captured target layers, EAGLE-3's (the fused feature, a normed output, and with own_head
  # N > 0 its own [H, N] head; for_target's default); (): EAGLE-1's (norm of the last hidden state, the
  # target's frozen head; the default of checkpoints written before the field)
  fuse: tuple = dataclasses.field(default=(), metadata=NOT_OPTION)
  own_head: int = dataclasses.field(default=0, metadata=NOT_OPTION)
  name = "parallelspec"
  state_axes = {"k": ("batch",), "v": ("batch",), "g": ("batch",), "w": ()}  # k, v [B, KVH, S, D]; g [B, k, H]
  budget_keys = ("nodes",)

  @property
  def capture(self):
    return tuple(self.fuse)

  def shapes(self):
    return shapes(self.dims, self.depth, three=bool(self.fuse), own_head=self.own_head)

  def validate(self):
    check_option_types(self)
    if self.depth < 2 or self.depth > 64:
      raise ValueError(f"{self.name}: depth must be 2..64 (one real entry and at least one mask), got {self.depth!r}")
    if not 1 <= self.nodes < MAX_TREE_NODES:
      raise ValueError(f"{self.name}: nodes must be 1..{MAX_TREE_NODES - 1}, got {self.nodes!r}")
    if self.own_head and not self.fuse:
      raise ValueError(f"{self.name}: its own head comes with EAGLE-3's host (fused layers), none given")
    eagle.validate_own_head(self)

  def check_target(self, target):
    super().check_target(target)
    if self.fuse:
      eagle.check_host3(self, target)

  @property
  def depths(self) -> int:
    return self.depth

  # ---------------------------------------------------------------- decoding
  def _embed(self, m, tok):
    return m.target.embed_tokens(tok).astype(jnp.float32)

  def _features(self, m, p, hidden, layers: dict):
    """[B, T, H] the host's features: the fused captured layers (EAGLE-3) or norm(h) (EAGLE-1), float32."""
    if self.fuse:
      return eagle.fuse(m.target.cfg, p, jnp.stack([layers[i] for i in self.fuse], -2))
    return m.target.norm(hidden).astype(jnp.float32)

  def init(self, m: Models, ctx: Context, prefill: Prefill):
    p = m.drafter.p.get_value()
    nxt, pos, last = flat.prefill_entries(ctx, prefill)
    f = self._features(m, p, prefill.hidden, prefill.layer_hidden)
    g, gm, k, v = with_masks(m.target.cfg, p, self._embed(m, nxt), f, pos, last + 1)
    B, n = nxt.shape
    kc = jnp.zeros((B, k.shape[2], ctx.tokens.shape[1], k.shape[3]), jnp.float32).at[:, :, :n].set(flat.heads_first(k))
    vc = jnp.zeros_like(kc).at[:, :, :n].set(flat.heads_first(v))
    g_last = jnp.take_along_axis(g, last[:, None, None], 1)
    state = dict(k=kc, v=vc, g=jnp.concatenate([g_last, gm], 1))
    if self.draft_vocab and not self.own_head:   # the target's reduced head columns, gathered once outside the loop
      state["w"] = self.head_weight(m)
    return state

  def propose(self, m: Models, state, ctx: Context):
    p = m.drafter.p.get_value()
    g = state["g"]                                                               # [B, k, H]
    if self.draft_vocab or self.own_head:
      logits = eagle.head_logits(m.target.cfg, p, g, state.get("w"))            # [B, k, N]
    else:
      logits = m.target.head(eagle.head_input(m.target.cfg, p, g))
    return self.candidates(ctx.root_token(), logits, m.drafter.vocab[...] if self.draft_vocab else None), state

  def update(self, m: Models, state, ctx: Context, step: Step):
    p = m.drafter.p.get_value()
    path = step.acceptance.path                                                 # [B, D+1]
    B, D1 = path.shape
    S = ctx.tokens.shape[1]
    old = ctx.root - step.committed                                             # entries before this step
    take = lambda x: jnp.take_along_axis(x, path[..., None], 1)                  # the root and accepted nodes
    f = self._features(m, p, take(step.hidden), {i: take(h) for i, h in step.layer_hidden.items()})
    pos = old[:, None] + jnp.arange(D1)[None]
    nxt = jnp.take_along_axis(ctx.tokens, jnp.minimum(pos + 1, S - 1), 1)     # the committed token after each
    live = jnp.arange(S)[None, :] < old[:, None]
    g, gm, k, v = with_masks(m.target.cfg, p, self._embed(m, nxt), f, pos, step.committed,
                             (state["k"], state["v"]), live)
    # Real entries past the committed count land beyond the new length: never live, overwritten next step.
    last = jnp.clip(step.committed - 1, 0, D1 - 1)
    g_new = jnp.concatenate([jnp.take_along_axis(g, last[:, None, None], 1), gm], 1)
    return dict(state, k=put_rows(state["k"], flat.heads_first(k), old, axis=2),
                v=put_rows(state["v"], flat.heads_first(v), old, axis=2),
                g=jnp.where((step.committed > 0)[:, None, None], g_new, state["g"]))

  # ---------------------------------------------------------------- construction
  @classmethod
  def for_target(cls, target, **config):
    """On EAGLE-3's host unless fuse=() (EAGLE-1's) is given."""
    config.setdefault("fuse", eagle.fuse_layers(target.cfg.layers))
    return super().for_target(target, **config)

  @classmethod
  def untrained(cls, target, *, seed: int = 0, noise: float = 0.05, **config) -> "ParallelSpec":
    """Weights as training starts them, plus noise (for tests: a bad drafter costs speed, never correctness)."""
    d = cls.for_target(target, **config)
    head = np.asarray(target.model.head_weight(jnp.arange(d.own_head)), np.float32) if d.own_head else None
    return d.with_weights(initial(target, d.depth, seed=seed, noise=noise, three=bool(d.fuse), head=head))
