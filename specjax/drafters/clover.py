"""Clover (Xiao et al. 2024, arXiv 2405.00263) and Clover-2 (XiaoBin1992/clover, `clover2.py`): Medusa-
style heads made regressive. Both versions are configurations of one drafter (`version` 1 or 2).

Pieces (H hidden, e(y) the target's frozen token embedding, N(.) an RMSNorm):
- Augmenting Block: `aug_layers` decoder layers initialised from the target's LAST layer, run over the
  sequence of the target's hidden states (its own KV cache in the loop carry; it only ever sees
  committed positions, so nothing is rolled back), then N -> u_t, the feature for speculation.
  Entry t reads the target's last residual h_t and, in Clover-2, the token x_{t+1} that follows it
  (merged by the gate below, as the public code does before its decoder layer).
- Regressive Connection: the head for depth d+1 sees the token chosen at depth d.
- Attention Decoder: how that token enters the head's state s.
  Clover-2: a per-head gate (the public code's ResAttentionBlock): q = Wq N(s) + bq, k = Wk e(y) + bk,
    v = Wv e(y) + bv split into the target's attention heads; s' = s + v * cos(q, k) per head.
    Head 0: out = N(W0 u + b0); depth d > 0: s' = gate(s, e(y)), out = N(W1 [s', e(y)] + b1).
  Clover-1 (no public code; built from the paper's description): the token joins the state's
    residual stream, which then cross-attends to the augmented sequence: r = s + e(y),
    s' = r + Wo attn(Wq N(r); the augmenting layer's cached keys/values), out = N(s' + SiLU(W s' + b));
    head 0 already sees the root token this way.
  `out` goes through the target's frozen LM head (optionally a reduced draft vocabulary).
- Tree (clover_tree.py, with the deviations from the authors' decoding): `tree="dynamic"` grows it level by
  level as `beam_genrate` does (one batched head call per depth, never per node); `tree="static"` drafts the
  public evaluation's fixed tree. Candidates are deterministic (q one-hot), so with sampling the engine's
  recursive rejection keeps the target's distribution exactly.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.cache import put_rows
from specjax.drafters import flat
from specjax.drafters.clover_tree import TOP_P, grow, grow_static, level_widths, static_tree
from specjax.engine import tree as tree_lib
from specjax.models.llama import apply_rope, decoder_layer, rms_norm
from specjax.protocol import (BUDGET, NOT_OPTION, MAX_TREE_NODES, Context, DraftTree, Models, Prefill, Step,
                              check_option_types)


# ------------------------------------------------------------------ weights

def shapes(dims: tuple, *, version: int, aug_layers: int) -> dict[str, tuple[int, ...]]:
  """One declaration per weight: name -> shape. The augmenting layers use the target's own layer
  declaration (`weight_shapes`), with `aug_layers` layers."""
  H, N, K, D, F, bias = dims
  out = flat.layer_shapes(dims, aug_layers, "aug")
  out.update({"aug_norm": (H,), "head_norm": (H,)})
  if version == 2:
    for g in ("in_gate", "gate"):
      out.update({f"{g}/norm": (H,), f"{g}/wq": (H, H), f"{g}/bq": (H,), f"{g}/wk": (H, H), f"{g}/bk": (H,),
                  f"{g}/wv": (H, H), f"{g}/bv": (H,)})
    out.update({"w0": (H, H), "b0": (H,), "w1": (2 * H, H), "b1": (H,)})
  else:
    out.update({"dec/norm": (H,), "dec/wq": (H, N * D), "dec/wo": (N * D, H), "w": (H, H), "b": (H,)})
  return out


_EYE = {"w0", "w1", "in_gate/wq", "in_gate/wk", "gate/wq", "gate/wk", "dec/wq"}


def initial(target, *, version: int, aug_layers: int, seed: int = 0, noise: float = 0.01) -> dict:
  """Float32 starting weights, nearly as the public code initialises them: the augmenting layers copy the
  target's last layer, the norms its final norm (the public gates' norms start at ones); biases 0; query/key and head projections identity
  (on the state's part of the input) + U(0, noise); value/output projections U(0, noise) alone, so
  a fresh gate or decoder adds almost nothing."""
  model = target.model
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in shapes(flat.dims_of(target.cfg), version=version, aug_layers=aug_layers).items():
    leaf = name.split("/")[-1]
    if name.startswith("aug/"):
      out[name] = flat.last_layer(model, leaf, aug_layers)
    elif leaf.endswith("norm"):
      out[name] = np.asarray(model.final_norm[...], np.float32)
    elif leaf.startswith("b"):
      out[name] = np.zeros(shape, np.float32)
    else:
      w = rng.uniform(0, noise, shape).astype(np.float32)
      if name in _EYE:
        n = min(shape)
        w[:n, :n] += np.eye(n, dtype=np.float32)
      out[name] = w
  return out


# ------------------------------------------------------------------ pure functions (decoding and training)

def gate(p, g: str, s, e, heads: int, eps: float):
  """Clover-2's attention decoder (ResAttentionBlock): s [..., H] state, e [..., H] token embedding."""
  q = numerics.dot(rms_norm(s, p[f"{g}/norm"], eps), p[f"{g}/wq"]) + p[f"{g}/bq"]
  k = numerics.dot(e, p[f"{g}/wk"]) + p[f"{g}/bk"]
  v = numerics.dot(e, p[f"{g}/wv"]) + p[f"{g}/bv"]
  split = lambda x: x.reshape(x.shape[:-1] + (heads, -1))
  q, k, v = split(q), split(k), split(v)
  # x / max(|x|, sqrt(eps)), written so the gradient at x = 0 (padding) is finite
  unit = lambda x: x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))
  cos = jnp.sum(unit(q) * unit(k), -1, keepdims=True)
  return s + (v * cos).reshape(s.shape)


def augment(cfg, p, x, positions, mask, kv=None, lengths=None, cos_sin=None):
  """The augmenting block over x [B, T, H] (positions [B, T], mask [B, T, T] over the new entries;
  kv: cached (k, v) [A, B, KVH, S, D] with `lengths` [B] live entries, or None).
  Returns (u [B, T, H] before the final norm, k, v [A, B, T, KVH, D] fresh keys/values)."""
  from specjax.models.llama import rope_frequencies
  inv = jnp.asarray(rope_frequencies(cfg))
  ang = positions.astype(jnp.float32)[..., None] * inv
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  live = None
  if kv is not None:
    live = (jnp.arange(kv[0].shape[3])[None, :] < lengths[:, None])[:, None, None, None, :]
  ks, vs = [], []
  A = p["aug/wqkv"].shape[0]
  for i in range(A):
    x, k, v = decoder_layer(cfg, flat.layer_weights(p, "aug", i), x, cos, sin, None if kv is None else (kv[0][i], kv[1][i]),
                            mask[:, None, None], live)
    ks.append(k)
    vs.append(v)
  return x, jnp.stack(ks), jnp.stack(vs)


def cross_attend(cfg, p, a, qpos, k, v, lengths):
  """Clover-1's attention decoder core: a [B, M, H] normed query inputs at rope positions qpos [B, M];
  k, v [B, KVH, S, D] the augmenting layer's keys/values, key s live for query m when s < lengths[b, m].
  Returns [B, M, H]."""
  from specjax.models.llama import rope_frequencies
  B, M, _ = a.shape
  N, K, D = cfg.heads, cfg.kv_heads, cfg.head_dim
  q = numerics.dot(a, p["dec/wq"]).reshape(B, M, N, D)
  ang = qpos.astype(jnp.float32)[..., None] * jnp.asarray(rope_frequencies(cfg))           # [B, M, D/2]
  q = apply_rope(q, jnp.cos(ang), jnp.sin(ang)).reshape(B, M, K, N // K, D)
  s = numerics.einsum("bmkgd,bksd->bkgms", q, k, preferred_element_type=jnp.float32) / np.sqrt(D)
  live = (jnp.arange(k.shape[2])[None, None, :] < lengths[..., None])[:, None, None]          # [B, 1, 1, M, S]
  w = jax.nn.softmax(jnp.where(live, s, -1e30), -1).astype(v.dtype)
  o = numerics.einsum("bkgms,bksd->bmkgd", w, v).reshape(B, M, N * D)
  return numerics.dot(o, p["dec/wo"])


@dataclasses.dataclass(frozen=True)
class Heads:
  """The regressive heads as pure functions of the weights. `first` gives the root's head output;
  `step` one regressive step: (state [..., H], token embedding [..., H]) -> (out, new state).
  For Clover-1 the cross-attention context (k, v, lengths, qpos) is bound in `ctx`."""
  version: int
  cfg: object

  def merge(self, p, h, e):
    """Input of the augmenting block at entry t from h_t and e(x_{t+1})."""
    return gate(p, "in_gate", h, e, self.cfg.heads, self.cfg.norm_eps) if self.version == 2 else h

  def first(self, p, u, e_root, ctx):
    """u [B, H] augmented feature (normed), e_root [B, H] -> (out [B, H], state [B, H])."""
    if self.version == 2:
      return rms_norm(numerics.dot(u, p["w0"]) + p["b0"], p["head_norm"], self.cfg.norm_eps), u
    out, s = self.step(p, u[:, None], e_root[:, None], ctx)
    return out[:, 0], s[:, 0]

  def step(self, p, s, e, ctx):
    """s, e [B, M, H] -> (out, state) [B, M, H]."""
    eps = self.cfg.norm_eps
    if self.version == 2:
      s = gate(p, "gate", s, e, self.cfg.heads, eps)
      return rms_norm(numerics.dot(jnp.concatenate([s, e], -1), p["w1"]) + p["b1"], p["head_norm"], eps), s
    k, v, lengths, qpos = ctx                       # lengths, qpos: [B] or [B, M]
    M = s.shape[1]
    per_query = lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], M)) if x.ndim == 1 else x
    s = s + e                       # the regressive connection: the token joins the residual stream
    s = s + cross_attend(self.cfg, p, rms_norm(s, p["dec/norm"], eps), per_query(qpos), k, v, per_query(lengths))
    out = rms_norm(s + jax.nn.silu(numerics.dot(s, p["w"]) + p["b"]), p["head_norm"], eps)
    return out, s


# ------------------------------------------------------------------ the drafter

@dataclasses.dataclass(frozen=True)
class Clover(flat.FlatDrafter):
  version: int = dataclasses.field(default=2, metadata=NOT_OPTION)
  heads: int = dataclasses.field(default=4, metadata=NOT_OPTION)                # tree depth: regressive steps
  aug_layers: int = dataclasses.field(default=1, metadata=NOT_OPTION)
  # Tree budget: candidate nodes (the root not counted). 6 is the CPU default, measured on the 2-core
  # Xeon (benchmarks/drafter_cost.py): a 7-node verify costs 1.3-1.4x a one-token step and the
  # estimated speedup peaks at 6 nodes and falls beyond; accelerators want 20-64.
  nodes: int = dataclasses.field(default=6, metadata=BUDGET)
  # "dynamic": `beam_genrate`'s rule (`grow`); "static": the public evaluation's tree (EVAL_TREE cut to the
  # heads and to `nodes`, `grow_static`)
  tree: str = dataclasses.field(default="dynamic", metadata=BUDGET)
  # the token rule's top-p (<0: the version's own, TOP_P)
  threshold: float = dataclasses.field(default=-1.0, metadata=BUDGET)
  name = "clover"
  state_axes = {"k": (None, "batch"), "v": (None, "batch"), "u": ("batch",), "w": ()}  # k, v [A, B, KVH, S, D]
  budget_keys = ("nodes",)     # held-out tau is measured per nodes

  @property
  def rule_threshold(self) -> float:
    return self.threshold if self.threshold >= 0 else TOP_P[self.version]

  def validate(self):
    check_option_types(self)
    if self.version not in (1, 2):
      raise ValueError(f"{self.name}: version must be 1 or 2, got {self.version!r}")
    for f in ("heads", "aug_layers", "nodes"):
      if getattr(self, f) < 1:
        raise ValueError(f"{self.name}: {f} must be a positive integer, got {getattr(self, f)!r}")
    if self.nodes >= MAX_TREE_NODES:
      raise ValueError(f"{self.name}: nodes must be below {MAX_TREE_NODES}, got {self.nodes}")
    if self.threshold > 1:
      raise ValueError(f"{self.name}: threshold must be at most 1, got {self.threshold}")
    if self.tree not in ("dynamic", "static"):
      raise ValueError(f"{self.name}: tree must be 'dynamic' or 'static', got {self.tree!r}")

  @property
  def num_nodes(self):
    if self.tree == "static":
      return static_tree(self.heads, self.nodes).size
    return 1 + min(self.nodes, sum(level_widths(self.heads, self.nodes)))

  @property
  def max_depth(self):
    return self.heads if self.tree == "dynamic" else static_tree(self.heads, self.nodes).max_depth

  def shapes(self):
    return shapes(self.dims, version=self.version, aug_layers=self.aug_layers)

  def _heads(self, m):
    return Heads(self.version, m.target.cfg)

  # ---------------------------------------------------------------- decoding
  def init(self, m: Models, ctx: Context, prefill: Prefill):
    cfg = m.target.cfg
    p = m.drafter.p.get_value()
    nxt, pos, last = flat.prefill_entries(ctx, prefill)                         # x_{t+1} for t < n
    B, n = nxt.shape
    x = self._heads(m).merge(p, prefill.hidden.astype(jnp.float32), m.target.embed_tokens(nxt).astype(jnp.float32))
    u, k, v = augment(cfg, p, x, pos, jnp.broadcast_to(jnp.tril(jnp.ones((n, n), bool)), (B, n, n)))
    A = k.shape[0]
    kc = jnp.zeros((A, B, cfg.kv_heads, ctx.tokens.shape[1], cfg.head_dim), jnp.float32).at[:, :, :, :n].set(
        jnp.swapaxes(k, 2, 3))
    vc = jnp.zeros_like(kc).at[:, :, :, :n].set(jnp.swapaxes(v, 2, 3))
    u_last = jnp.take_along_axis(u, last[:, None, None], 1)[:, 0]
    return dict(k=kc, v=vc, u=rms_norm(u_last, p["aug_norm"], cfg.norm_eps), w=self.head_weight(m))

  def _tree(self, m, state, root, ctx_len):
    p = m.drafter.p.get_value()
    vocab = m.drafter.vocab[...] if self.draft_vocab else None

    def logits_fn(out):
      return jax.nn.log_softmax(numerics.dot(out, state["w"]), -1)

    def embed(vidx):
      tok = vocab[vidx] if vocab is not None else vidx
      return tok, m.target.embed_tokens(tok).astype(jnp.float32)

    ctx = (state["k"][-1], state["v"][-1], ctx_len, ctx_len - 1)
    args = (self._heads(m), p, logits_fn, embed, state["u"], root, ctx)
    if self.tree == "static":
      return grow_static(*args, static_tree(self.heads, self.nodes))
    return grow(*args, depth=self.heads, nodes=self.nodes, top_p=self.rule_threshold, quarter=self.version == 1)[:2]

  def propose(self, m: Models, state, ctx: Context):
    out = self._tree(m, state, ctx.root_token(), ctx.root)
    if self.tree == "static":
      return static_tree(self.heads, self.nodes).draft(out), state
    mask, depth = tree_lib.ancestors_from_parents(out[1])
    return DraftTree(*out, depth, mask, None, self.heads), state

  def update(self, m: Models, state, ctx: Context, step: Step):
    cfg = m.target.cfg
    p = m.drafter.p.get_value()
    path = step.acceptance.path                                                 # [B, D+1]
    B, D1 = path.shape
    old = ctx.root - step.committed                                             # entries before this step
    h = jnp.take_along_axis(step.hidden, path[..., None], 1).astype(jnp.float32)  # root and accepted nodes
    pos = old[:, None] + jnp.arange(D1)[None]
    nxt = jnp.take_along_axis(ctx.tokens, jnp.minimum(pos + 1, ctx.tokens.shape[1] - 1), 1)
    x = self._heads(m).merge(p, h, m.target.embed_tokens(nxt).astype(jnp.float32))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((D1, D1), bool)), (B, D1, D1))
    u, k, v = augment(cfg, p, x, pos, mask, (state["k"], state["v"]), old)
    put = lambda c, x, s: put_rows(c, jnp.swapaxes(x, 2, 3), s, batch_axis=1, axis=3)          # [A, B, KVH, S, D]
    last = jnp.clip(step.committed - 1, 0, D1 - 1)
    u_last = rms_norm(jnp.take_along_axis(u, last[:, None, None], 1)[:, 0], p["aug_norm"], cfg.norm_eps)
    moved = step.committed > 0
    return dict(state, k=put(state["k"], k, old), v=put(state["v"], v, old),
                u=jnp.where(moved[:, None], u_last, state["u"]))

  # ---------------------------------------------------------------- construction
  @classmethod
  def untrained(cls, target, *, seed: int = 0, noise: float = 0.05, **config) -> "Clover":
    """Weights as training starts them, plus noise (for tests: a bad drafter costs speed, never correctness)."""
    d = cls.for_target(target, **config)
    return d.with_weights(initial(target, version=d.version, aug_layers=d.aug_layers, seed=seed, noise=noise))


@dataclasses.dataclass(frozen=True)
class Clover2(Clover):
  """Clover-2: the same drafter, version 2 (the registry's 'clover2')."""
  version: int = dataclasses.field(default=2, metadata=NOT_OPTION)
  name = "clover2"


@dataclasses.dataclass(frozen=True)
class Clover1(Clover):
  """Clover (version 1; the registry's 'clover')."""
  version: int = dataclasses.field(default=1, metadata=NOT_OPTION)
  name = "clover"
