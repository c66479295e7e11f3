"""EAGLE (Li et al., ICML 2024) with EAGLE-2's dynamic draft tree (Li et al., EMNLP 2024);
SafeAILab/EAGLE `eagle/model/cnets.py`, `ea_model.py`.

Draft model (H hidden; f_t = norm(h_t) the target's NORMED last hidden state at position t, the
"feature" EAGLE reads from Hugging Face's model output; e(x) the target's frozen token embedding):
    entry t:  x_t = fc([e(x_{t+1}), f_t])          (2H -> H, with bias)
              g_t = decoder_layer(x_t)              one layer like the target's, initialised from its
                                                    last layer, with its own KV cache (entry t at
                                                    rope position t, causal)
    g_t predicts f_{t+1}; the target's frozen LM head on g_t (optionally a reduced draft vocabulary)
    predicts x_{t+2}.
The draft cache holds entries t < root (root: the position of the last committed token), i.e.
exactly the committed sequence: `update` runs the layer over the accepted path's entries (the
target's features of the accepted tokens paired with the tokens that follow them) and appends
them at the committed length, per row. Nothing drafted ever enters it, so nothing is rolled back.

EAGLE-2 tree, built inside the program (one batched decoder-layer call per depth, never per node):
level 1 is the top_k of head(g_{root-1}); for each further level the top_k frontier nodes by
cumulative log-probability run the layer once (their entries attend to the draft cache plus their
own tree ancestors' entries, at rope position root + level - 1, the drafted feature of the parent
standing in for the target's), each takes its top_k children, and the best top_k of those top_k^2
form the next frontier. Finally all drafted nodes (top_k + (depth - 1) top_k^2) are ranked by
cumulative log-probability and the best `nodes` form the tree (ancestor-closed). Candidates are
deterministic (the top-k), so with sampling q is one-hot and the engine's recursive rejection keeps
the target's distribution exactly, as EAGLE-2's own sampling does. Given the same log-probabilities at
every step, the nodes and parents kept are those of a port of `topK_genrate` (tests/test_eagle.py);
the one difference: equal scores go to the lower index (a parent before its child), where torch.topk
leaves the order unspecified.

EAGLE-3 (Li et al. 2025; `eagle/traineagle3/cnets.py`), `Eagle3`: the feature is fused from a low, a
middle and a high target layer, f_t = W [n(l_t), n(m_t), n(h_t)] (3H -> H, n a weightless RMS
normalisation; the layers declared in `capture`), the draft's output is normed before the head (its
own, or the target's frozen rows) over a reduced draft vocabulary, and training is "training-time
test" (train/eagle.py `unroll`): the draft runs on its own outputs for several steps, step i reading
step i-1's output as its feature with the attention pattern the tree has when decoding, soft
cross-entropy only, weights 0.8^i.

Deviations from the public code (docs/PUBLIC_TRAINERS.md has the reading):
- Its first decoder layer skips the input RMSNorm (EAGLE-1) or takes [norm(e), norm(f)] 2H-wide into
  attention (EAGLE-3); ours is fc 2H -> H then the target's `decoder_layer` unchanged, so it follows the
  target's weight layouts.
- The head: EAGLE-1 uses the target's head over the full vocabulary; ours is the target's frozen head
  restricted to a reduced draft vocabulary. EAGLE-3 trains its own [H -> draft vocabulary] head from a
  random start; ours (`own_head`, weight `head`) starts from the target's rows; a checkpoint without one
  (the shipped eagle3, trained before it existed) scores with the target's frozen rows.
- EAGLE-3's fused feature: the public fc reads the raw captured residuals; ours RMS-normalises each first.
- Initialisation: the public fc, layer and head start random (norms at ones); ours copies the target's last
  layer, starts fc / fuse near identity and EAGLE-3's output norm from the target's final norm.
Training deviations (soft targets, noise, optimiser) are listed in train/eagle.py.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specjax import numerics
from specjax.cache import put_rows
from specjax.drafters import flat
from specjax.engine import tree as tree_lib
from specjax.models.llama import rms_norm
from specjax.protocol import (BUDGET, NOT_OPTION, MAX_TREE_NODES, Context, DraftTree, Models, Prefill, Step,
                              check_option_types)


# ------------------------------------------------------------------ weights

def shapes(dims: tuple) -> dict[str, tuple[int, ...]]:
  """One declaration per weight: name -> shape. fc/w [2H, H] reads [e(x_{t+1}), f_t]."""
  H = dims[0]
  return {"fc/w": (2 * H, H), "fc/b": (H,), **flat.layer_shapes(dims, 1, "layer")}


def shapes3(dims: tuple, own_head: int = 0) -> dict[str, tuple[int, ...]]:
  """EAGLE-3 adds fuse/w [3H, H] (the three captured layers -> the feature), norm [H] (before the head)
  and, with own_head N > 0, its own head [H, N] over the draft vocabulary (else the target's rows)."""
  H = dims[0]
  return {**shapes(dims), "fuse/w": (3 * H, H), "norm": (H,), **({"head": (H, own_head)} if own_head else {})}


def fuse_layers(layers: int) -> tuple[int, ...]:
  """EAGLE-3's low, middle and high layers: the public code reads the inputs of layers 2, L/2 and
  L-3, i.e. the outputs of layers 1, L/2-1 and L-4 (clipped to the model for tiny ones)."""
  return tuple(int(min(max(i, 0), layers - 1)) for i in (1, layers // 2 - 1, layers - 4))


def initial(target, *, seed: int = 0, noise: float = 0.01, three: bool = False, head=None) -> dict:
  """Float32 starting weights: the layer copies the target's last layer, norm its final norm; fc
  passes the feature through (identity on its half) and fuse/w the high layer, plus U(0, noise)
  everywhere; bias 0. head [H, N] (EAGLE-3): its own head's start, the target's head rows over the draft
  vocabulary (the public one starts random)."""
  rng = np.random.default_rng(seed)
  out = {}
  dims = flat.dims_of(target.cfg)
  own = 0 if head is None else np.shape(head)[1]
  for name, shape in (shapes3(dims, own) if three else shapes(dims)).items():
    if name == "head":
      out[name] = np.asarray(head, np.float32)
    elif name.startswith("layer/"):
      out[name] = flat.last_layer(target.model, name.split("/")[1], 1)
    elif name == "fc/b":
      out[name] = np.zeros(shape, np.float32)
    elif name == "norm":
      out[name] = np.asarray(target.model.final_norm[...], np.float32)
    else:
      w = rng.uniform(0, noise, shape).astype(np.float32)
      H = shape[1]
      w[-H:] += np.eye(H, dtype=np.float32)
      out[name] = w
  return out


# ------------------------------------------------------------------ pure functions (decoding and training)

def draft_inputs(p, e, f):
  """e [..., H] embeddings of x_{t+1}, f [..., H] features f_t -> the layer's input [..., H]."""
  return numerics.dot(jnp.concatenate([e, f], -1), p["fc/w"]) + p["fc/b"]


def entries(cfg, p, e, f, positions, mask, kv=None, live=None):
  """The draft over new entries: e, f [B, T, H], positions [B, T], mask [B, T, T] among them; kv,
  live: earlier entries (see flat.run_layer). Returns (g [B, T, H], k, v [B, T, KVH, D])."""
  return flat.run_layer(cfg, flat.layer_weights(p, "layer", 0), draft_inputs(p, e, f), positions, mask, kv, live)


def fuse(cfg, p, layers):
  """EAGLE-3's feature: layers [..., 3, H] the captured residuals -> [..., H]."""
  x = layers.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + cfg.norm_eps)
  return numerics.dot(x.reshape(x.shape[:-2] + (-1,)), p["fuse/w"])


def head_input(cfg, p, g):
  """What the frozen LM head reads: EAGLE-3 (weights with `norm`) norms the draft's output; EAGLE-1 does not."""
  return rms_norm(g, p["norm"], cfg.norm_eps) if "norm" in p else g


def head_logits(cfg, p, g, w):
  """Draft logits [..., N] of the draft's outputs g [..., H]: EAGLE-3's own head p["head"] [H, N] when it
  has one, else w [H, N] (the target's frozen head rows over the draft vocabulary)."""
  return numerics.dot(head_input(cfg, p, g), p["head"] if "head" in p else w, preferred_element_type=jnp.float32)


def causal(B: int, T: int):
  return jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))


def pool_size(depth: int, top_k: int) -> int:
  """Drafted nodes before the global rerank: top_k at level 1, top_k^2 at each further level."""
  return top_k + (depth - 1) * top_k * top_k


def grow(cfg, p, logp_fn, embed, g, root, kc, vc, length, *, depth: int, top_k: int, nodes: int):
  """EAGLE-2's dynamic tree for each row, inside the program.

  g [B, H] the draft's output at the last committed entry; root [B] root tokens; kc, vc [B, KVH, S, D]
  the draft cache with `length` [B] live entries (= the root's position); logp_fn: g [..., H] ->
  log-probabilities [..., N] over the draft vocabulary; embed: draft index -> (target id, embedding).
  Returns (tokens, parent, joint) [B, 1+n]: the tree (node 0 the root) and each node's cumulative
  log-probability (0 at the root)."""
  B, H = g.shape
  S = kc.shape[2]
  lp, idx = jax.lax.top_k(logp_fn(g), top_k)                                      # level 1: [B, k]
  tok, e = embed(idx)
  toks, joints, parents = [tok], [lp], [jnp.zeros((B, top_k), jnp.int32)]
  front = 1 + jnp.broadcast_to(jnp.arange(top_k, dtype=jnp.int32), (B, top_k))    # flat indices of the frontier
  f_par = jnp.broadcast_to(g[:, None], (B, top_k, H))                              # their parents' drafted feature
  base = lp
  anc = jnp.zeros((B, top_k, 0), bool)              # [B, w, E]: which earlier tree entries each frontier node sees
  ek = jnp.zeros(kc.shape[:2] + (0,) + kc.shape[3:], kc.dtype)
  ev = jnp.zeros_like(ek)
  cache_live = jnp.arange(S)[None, :] < length[:, None]                            # [B, S]
  count = 1 + top_k
  for d in range(1, depth):
    w, E = f_par.shape[1], ek.shape[2]
    live = jnp.concatenate([jnp.broadcast_to(cache_live[:, None], (B, w, S)), anc], 2)
    eye = jnp.broadcast_to(jnp.eye(w, dtype=bool), (B, w, w))
    out, k, v = entries(cfg, p, e, f_par, jnp.broadcast_to(length[:, None] + d - 1, (B, w)), eye,
                        (jnp.concatenate([kc, ek], 2), jnp.concatenate([vc, ev], 2)), live)
    ek, ev = jnp.concatenate([ek, flat.heads_first(k)], 2), jnp.concatenate([ev, flat.heads_first(v)], 2)
    idx, joint = tree_lib.top_children(logp_fn(out), base, top_k)                 # [B, w, k]
    joint = joint.reshape(B, w * top_k)
    tok, e_all = embed(idx.reshape(B, w * top_k))
    toks.append(tok)
    joints.append(joint)
    parents.append(jnp.repeat(front, top_k, 1))
    if d + 1 < depth:
      base, pick = jax.lax.top_k(joint, top_k)                                     # the next frontier
      from_m = pick // top_k
      e = jnp.take_along_axis(e_all, pick[..., None], 1)
      f_par = jnp.take_along_axis(out, from_m[..., None], 1)
      own = jax.nn.one_hot(E + from_m, E + w, dtype=bool)                         # the parent's own entry
      anc = jnp.take_along_axis(jnp.pad(anc, ((0, 0), (0, 0), (0, w))), from_m[..., None], 1) | own
      front = count + pick
    count += w * top_k
  joint = jnp.concatenate(joints, 1)
  out_tok, out_par, keep = tree_lib.keep_best(root, jnp.concatenate(toks, 1), joint, jnp.concatenate(parents, 1), nodes)
  return out_tok, out_par, jnp.concatenate([jnp.zeros((B, 1)), jnp.take_along_axis(joint, keep, 1)], 1)


def validate_own_head(d):
  """Its own head's columns (own_head) against the draft vocabulary (0: the full one)."""
  if d.own_head < 0 or (d.draft_vocab and d.own_head not in (0, d.draft_vocab)):
    raise ValueError(f"{d.name}: its own head has {d.own_head} columns; the draft vocabulary {d.draft_vocab}")


def check_host3(d, target):
  """A drafter on EAGLE-3's host (fields fuse, own_head, draft_vocab) against the target it runs with."""
  if d.own_head and not d.draft_vocab and d.own_head != target.cfg.vocab:
    raise ValueError(f"{d.name}: its own head has {d.own_head} columns; the target's vocabulary {target.cfg.vocab}")
  if len(d.fuse) != 3 or not all(0 <= i < target.cfg.layers for i in d.fuse):
    raise ValueError(f"{d.name}: fused layers {tuple(d.fuse)} do not fit a target of {target.cfg.layers} layers")


# ------------------------------------------------------------------ the drafter

@dataclasses.dataclass(frozen=True)
class Eagle(flat.FlatDrafter):
  # Tree budget. The papers' depth 7 / top_k 10 / 60 nodes is a GPU setting. On the 2-core Xeon
  # (benchmarks/eagle_cost.py, BENCHMARKS.md) a step costs 1.22x an autoregressive step at 3/4/4,
  # 1.41x at 4/4/8, 1.55x at 5/4/10 and 1.87x at 5/6/16, nearly all of it the verify of the wider
  # tree (the draft is under 10%), while the shipped checkpoint's held-out tau only grows from 1.57
  # to 1.67, 1.70 and 1.78: 3/4/4 gives the most tokens per second. Accelerators: 6/8/24 and up.
  depth: int = dataclasses.field(default=3, metadata=BUDGET)   # tree depth (EAGLE-2's `depth` + 1): depth - 1 layer calls
  top_k: int = dataclasses.field(default=4, metadata=BUDGET)   # children per frontier node, and the frontier's width
  nodes: int = dataclasses.field(default=4, metadata=BUDGET)   # candidate nodes kept (the root not counted)
  name = "eagle"
  state_axes = {"k": ("batch",), "v": ("batch",), "g": ("batch",), "w": ()}  # k, v [B, KVH, S, D]; g [B, H]
  budget_keys = ("depth", "top_k", "nodes")

  def shapes(self):
    return shapes(self.dims)

  def validate(self):
    check_option_types(self)
    for f in ("depth", "top_k", "nodes"):
      if getattr(self, f) < 1:
        raise ValueError(f"{self.name}: {f} must be a positive integer, got {getattr(self, f)!r}")
    if self.nodes >= MAX_TREE_NODES:
      raise ValueError(f"{self.name}: nodes must be below {MAX_TREE_NODES}, got {self.nodes}")
    if self.draft_vocab and self.top_k > self.draft_vocab:
      raise ValueError(f"{self.name}: top_k ({self.top_k}) exceeds the draft vocabulary ({self.draft_vocab})")
    if self.depth > 64 or self.top_k > 64:
      raise ValueError(f"{self.name}: depth and top_k must be at most 64, got {self.depth} and {self.top_k}")

  @property
  def num_nodes(self):
    return 1 + min(self.nodes, pool_size(self.depth, self.top_k))

  @property
  def max_depth(self):
    return self.depth

  # ---------------------------------------------------------------- decoding
  def _features(self, m, p, hidden, layers: dict):
    """What the target gave at T positions (last residual [B, T, H], captured layers {i: [B, T, H]})
    -> the draft's features [B, T, H]: f = norm(h), float32."""
    return m.target.norm(hidden).astype(jnp.float32)

  def _embed(self, m, tok):
    return m.target.embed_tokens(tok).astype(jnp.float32)

  def init(self, m: Models, ctx: Context, prefill: Prefill):
    cfg = m.target.cfg
    p = m.drafter.p.get_value()
    nxt, pos, last = flat.prefill_entries(ctx, prefill)
    B, n = nxt.shape
    f = self._features(m, p, prefill.hidden, prefill.layer_hidden)
    g, k, v = entries(cfg, p, self._embed(m, nxt), f, pos, causal(B, n))
    kc = jnp.zeros((B, k.shape[2], ctx.tokens.shape[1], k.shape[3]), jnp.float32).at[:, :, :n].set(flat.heads_first(k))
    vc = jnp.zeros_like(kc).at[:, :, :n].set(flat.heads_first(v))
    state = dict(k=kc, v=vc, g=jnp.take_along_axis(g, last[:, None, None], 1)[:, 0])
    if self.draft_vocab and "head" not in p:     # the target's reduced head columns, gathered once outside the loop
      state["w"] = self.head_weight(m)
    return state

  def tree(self, m: Models, state, root, length):
    """(tokens, parent, joint) [B, 1+n] of the dynamic tree after the committed entries."""
    p = m.drafter.p.get_value()
    vocab = m.drafter.vocab[...] if self.draft_vocab else None

    def logp_fn(g):
      if "head" in p or vocab is not None:
        return jax.nn.log_softmax(head_logits(m.target.cfg, p, g, state.get("w")), -1)
      return jax.nn.log_softmax(m.target.head(head_input(m.target.cfg, p, g)), -1)

    def embed(vidx):
      tok = vocab[vidx] if vocab is not None else vidx
      return tok, self._embed(m, tok)

    return grow(m.target.cfg, p, logp_fn, embed, state["g"], root, state["k"], state["v"], length,
                depth=self.depth, top_k=self.top_k, nodes=self.nodes)

  def propose(self, m: Models, state, ctx: Context):
    tok, parent, _ = self.tree(m, state, ctx.root_token(), ctx.root)
    mask, depth = tree_lib.ancestors_from_parents(parent)
    return DraftTree(tok, parent, depth, mask, None, self.depth), state

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
    live = jnp.broadcast_to((jnp.arange(S)[None, :] < old[:, None])[:, None], (B, D1, S))
    g, k, v = entries(m.target.cfg, p, self._embed(m, nxt), f, pos, causal(B, D1), (state["k"], state["v"]), live)
    # Entries past the committed count land beyond the new length: never live, overwritten next step.
    last = jnp.clip(step.committed - 1, 0, D1 - 1)
    g_last = jnp.take_along_axis(g, last[:, None, None], 1)[:, 0]
    return dict(state, k=put_rows(state["k"], flat.heads_first(k), old, axis=2),
                v=put_rows(state["v"], flat.heads_first(v), old, axis=2),
                g=jnp.where((step.committed > 0)[:, None], g_last, state["g"]))

  # ---------------------------------------------------------------- construction
  @classmethod
  def untrained(cls, target, *, seed: int = 0, noise: float = 0.05, **config) -> "Eagle":
    """Weights as training starts them, plus noise (for tests: a bad drafter costs speed, never correctness)."""
    return cls.for_target(target, **config).with_weights(initial(target, seed=seed, noise=noise))


@dataclasses.dataclass(frozen=True)
class Eagle3(Eagle):
  """EAGLE-3: features fused from three captured target layers; normed output; (trained with train/eagle.py `ttt_loss`)."""
  # the captured (low, mid, high) target layers: set by for_target / the checkpoint
  fuse: tuple = dataclasses.field(default=(), metadata=NOT_OPTION)
  # columns of its own trained head (the draft vocabulary's size; the target's vocabulary with the full
  # one); 0: the target's frozen head rows (checkpoints written before the head existed)
  own_head: int = dataclasses.field(default=0, metadata=NOT_OPTION)
  name = "eagle3"

  @property
  def capture(self):
    return tuple(self.fuse)

  def shapes(self):
    return shapes3(self.dims, self.own_head)

  def validate(self):
    super().validate()
    validate_own_head(self)

  def check_target(self, target):
    super().check_target(target)
    check_host3(self, target)

  def _features(self, m, p, hidden, layers: dict):
    return fuse(m.target.cfg, p, jnp.stack([layers[i] for i in self.fuse], -2))

  @classmethod
  def for_target(cls, target, **config):
    config.setdefault("fuse", fuse_layers(target.cfg.layers))
    return super().for_target(target, **config)

  @classmethod
  def untrained(cls, target, *, seed: int = 0, noise: float = 0.05, **config) -> "Eagle3":
    """With own_head=N its head starts from the target's rows of the first N tokens (the vocabulary
    `with_weights` gives by default)."""
    d = cls.for_target(target, **config)
    head = np.asarray(target.model.head_weight(jnp.arange(d.own_head)), np.float32) if d.own_head else None
    return d.with_weights(initial(target, seed=seed, noise=noise, three=True, head=head))
