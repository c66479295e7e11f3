"""Draft-model speculation (Leviathan et al. 2023; Chen et al. 2023), self-speculation from the
target's own first layers (LayerSkip; Draft & Verify; AdaDecode, Wei et al. 2025) and staged
speculation (Spector & Re 2023). One mechanism, three drafters:

  draft-model  an independent Llama-family model with the target's tokenizer (`model`: a path or
               "default"; `draft_layers`: keep only its first N layers).
  self-spec    the target's own first `exit_layer` layers + its final norm and LM head (the exit head).
  staged       self-spec whose proposals are sped up by prompt lookup and arranged as a tree.

The draft network keeps its own KV cache in the loop state, a `KVCache` of its layers, written at
per-row offsets. It holds the committed sequence up to a lag: before each draft, the positions
[root - lag, root] are recomputed in the first draft call, so whatever the target accepted (a main-chain
node, a sibling, another branch) the entries the next draft reads are right, and nothing has to be
rolled back explicitly: the cache's per-row `lengths` are just set to root - lag. lag = 1 for a chain
(the last accepted candidate's entry may never have been computed: the draft's last token is never fed
back), lookup + 1 for staged (an accepted prompt-lookup branch may run past the draft's own entries).

A chain (`width` 1) drafts `gamma` tokens with `gamma` draft calls (the first over lag + 1 tokens, the
rest over one). `width` w > 1 adds w - 1 siblings at every depth as leaves (no extra draft call: the
next-best tokens of the same logits, or further independent samples of q), which the target accepts
where the main chain's token is rejected. With `temperature` > 0 the draft samples its tokens from
q = softmax(logits / temperature) and hands q to the engine (`DraftTree.draft_probs`), whose ratio
test min(1, p/q) with residual resampling keeps the output distribution exactly the target's; at 0
the candidates are the draft's top tokens (deterministic: lossless under both greedy and sampled
acceptance).

Self-speculation and the target's cache. The exit layers' KV for committed positions is the target's
own (same weights, same inputs), so it could be read from the target's cache instead of kept twice. We
keep a separate cache of the first `exit_layer` layers because (1) the engine does not hand the target
cache to drafters, and reading it with the drafted entries appended would copy those layers of the
target cache every step (a value update of a buffer the verify still reads), and (2) the draft's
drafted-token KV could in principle skip the verify's first layers, but the verify must still run
those layers for the last drafted token and the siblings, so it would read the same weights and save
nothing on a memory-bound machine, while mixing two roundings into the target's forward. The cost is
memory (exit_layer / layers of the target's cache) and a prefill of the exit layers.

Staged (one draft step): prompt lookup proposes c_1..c_k; the first draft call reads the history,
the root and c_1..c_k at once, so the draft checks the whole lookup chain in one forward; j = the
number of leading c's equal to the draft's own greedy choice. The draft then continues from c_j for
gamma tokens (gamma draft calls in all, as a chain). Tree: root -> c_1 -> ... -> c_k (the lookup
chain) with the draft's chain e_1..e_gamma branching off c_j: when lookup and draft agree the draft
gets j tokens ahead for free; where they disagree the target sees both continuations.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax.cache import KVCache
from specjax.drafters.ngram import PromptLookup
from specjax.engine import tree as tree_lib
from specjax.models.config import ModelConfig
from specjax.models.llama import LAYER_WEIGHTS, Llama, causal_mask, weight_shapes
from specjax.protocol import (BUDGET, NOT_OPTION, MAX_TREE_NODES, Context, Drafter, DraftTree, Models, Prefill,
                              check_option_types)


def _take(x, idx):
  """x [B, T, ...], idx [B, n] -> [B, n, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), 1)


@dataclasses.dataclass(frozen=True)
class _DraftNetwork(Drafter):
  """Base: a draft network (embedding, decoder layers [0, stop), norm + LM head) with its own cache."""
  gamma: int = dataclasses.field(default=4, metadata=BUDGET)         # draft tokens (calls) per step along the chain
  width: int = dataclasses.field(default=1, metadata=BUDGET)         # per depth: the chain's token + width - 1 siblings
  # draft sampling temperature; 0: deterministic top-`width` candidates
  temperature: float = dataclasses.field(default=0.0, metadata=BUDGET)
  lookup = 0                    # staged: prompt-lookup tokens checked by the first draft call

  def validate(self):
    check_option_types(self)
    if not 1 <= self.gamma <= 64 or not 1 <= self.width <= 64:
      raise ValueError(f"{self.name}: gamma and width must be integers in [1, 64], got {self.gamma}, {self.width}")
    if self.num_nodes >= MAX_TREE_NODES:
      raise ValueError(f"{self.name}: gamma * width must be below {MAX_TREE_NODES}")
    if self.temperature < 0:
      raise ValueError(f"{self.name}: temperature must be >= 0, got {self.temperature}")

  @property
  def num_nodes(self):
    return 1 + self.lookup + self.gamma * self.width

  @property
  def max_depth(self):
    return self.lookup + self.gamma

  @functools.cached_property
  def shape(self) -> tree_lib.StaticTree:
    """The chain with its sibling leaves: depth-major, the chain's node first at every depth."""
    return tree_lib.from_choices([(0,) * d + (r,) for d in range(self.gamma) for r in range(self.width)])

  # ---------------------------------------------------------------- the network (subclasses)
  def _module(self, m: Models):
    """The module whose embed_tokens / layers / logits the draft runs."""
    raise NotImplementedError

  def _stop(self, m: Models) -> int:
    """Decoder layers the draft runs: [0, stop)."""
    return self._module(m).cfg.layers

  def _run(self, m, tokens, positions, cache, mask):
    """tokens, positions [B, T] -> (last residual [B, T, H], fresh k, v [stop, B, T, KVH, D])."""
    mod = self._module(m)
    x, k, v, _ = mod.layers(mod.embed_tokens(tokens), positions, cache, mask, stop=self._stop(m))
    return x, k, v

  def _logits(self, m, state, x):
    """Last residual [..., H] -> float32 logits [..., V] over the target's vocabulary (state: the
    drafter's, for what `_head_state` put there)."""
    return self._module(m).logits(x)

  def _head_state(self, m) -> dict:
    """Entries `init` adds to the state once, for `_logits` (e.g. the columns of a reduced head)."""
    return {}

  # ---------------------------------------------------------------- the protocol
  def init(self, m: Models, ctx: Context, prefill: Prefill):
    mod = self._module(m)
    B, S = ctx.tokens.shape
    n = prefill.hidden.shape[1]                   # the prefilled prompt positions (all but the last token)
    cache = KVCache.zeros(layers=self._stop(m), batch=B, max_len=S, kv_heads=mod.cfg.kv_heads,
                          head_dim=mod.cfg.head_dim)
    _, k, v = self._run(m, ctx.tokens[:, :n], jnp.broadcast_to(jnp.arange(n), (B, n)), None, causal_mask(B, n))
    return dict(cache=cache.write(k, v), **self._head_state(m))

  def _step(self, m, state, cache: KVCache, tok, pos):
    """One draft call over one token per row: tok, pos [B] -> (logits [B, V], cache with its entry at pos)."""
    B = tok.shape[0]
    cache = dataclasses.replace(cache, lengths=pos)
    x, k, v = self._run(m, tok[:, None], pos[:, None], cache, causal_mask(B, 1))
    return self._logits(m, state, x[:, 0]), cache.write(k, v)

  def _candidates(self, logits, key):
    """logits [B, V] -> (tokens [B, width]: the chain's first, q [B, V] or None)."""
    if self.temperature == 0:
      return jax.lax.top_k(logits, self.width)[1].astype(jnp.int32), None
    q = jax.nn.softmax(logits / self.temperature, -1)
    tok = jax.random.categorical(key, logits / self.temperature, shape=(self.width,) + logits.shape[:1])
    return tok.T.astype(jnp.int32), q

  def propose(self, m: Models, state, ctx: Context):
    B, S = ctx.tokens.shape
    k = self.lookup
    root = ctx.root
    lag = 1 + k
    start = jnp.maximum(root - lag, 0)
    r = root - start                                                              # the root's index in the window
    pos = start[:, None] + jnp.arange(lag + 1 + k)[None]                          # [B, W]
    tok = jnp.take_along_axis(ctx.tokens, jnp.minimum(pos, S - 1), 1)
    if k:
      look = PromptLookup(num_tokens=k, max_ngram=self.max_ngram).propose(m, (), ctx)[0]
      c, has = look.tokens[:, 1:], look.parent[:, 1] >= 0                        # [B, k], [B]
      tok = jnp.where(pos <= root[:, None], tok, _take(c, jnp.clip(pos - root[:, None] - 1, 0, k - 1)))
    cache = dataclasses.replace(state["cache"], lengths=start)
    x, kk, vv = self._run(m, tok, pos, cache, causal_mask(B, pos.shape[1]))
    cache = cache.write(kk, vv)
    logits = self._logits(m, state, _take(x, r[:, None] + jnp.arange(k + 1)[None]))       # [B, k+1, V]: after root, c_1..c_k

    if k:   # staged: the draft continues after the longest lookup prefix it agrees with
      agree = jnp.cumprod(c == jnp.argmax(logits[:, :k], -1), 1) & has[:, None]
      j = agree.sum(1).astype(jnp.int32)
      logits = _take(logits, j[:, None])[:, 0]
    else:
      j = jnp.zeros(B, jnp.int32)
      logits = logits[:, 0]

    keys = jax.random.split(ctx.key if ctx.key is not None else jax.random.key(0), self.gamma)
    toks, qs = [], []
    for d in range(self.gamma):
      cand, q = self._candidates(logits, keys[d])
      toks.append(cand)
      qs.append(q)
      if d + 1 < self.gamma:
        logits, cache = self._step(m, state, cache, cand[:, 0], root + j + d + 1)
    drafted = jnp.concatenate(toks, 1)                                            # [B, gamma * width]
    state = dict(state, cache=cache)

    if not k:
      tree = self.shape.draft(jnp.concatenate([ctx.root_token()[:, None], drafted], 1))
      if self.temperature > 0:     # each node's q: the distribution at its parent, the root's unused
        V = qs[0].shape[-1]
        q = jnp.stack(qs, 1)                                                    # [B, gamma, V]
        q = jnp.concatenate([jnp.zeros((B, 1, V)), jnp.repeat(q, self.width, 1)], 1)
        tree = dataclasses.replace(tree, draft_probs=q)
      return tree, state

    # staged tree: root, c_1..c_k (the lookup chain), e_1..e_gamma (the draft's chain from c_j)
    look_par = jnp.where(has[:, None], jnp.arange(k)[None], -1)
    draft_par = jnp.concatenate([j[:, None], k + 1 + jnp.broadcast_to(jnp.arange(self.gamma - 1), (B, self.gamma - 1))], 1)
    parent = jnp.concatenate([jnp.full((B, 1), -1), look_par, draft_par], 1).astype(jnp.int32)
    mask, depth = tree_lib.ancestors_from_parents(parent)
    tokens = jnp.concatenate([ctx.root_token()[:, None], c, drafted], 1).astype(jnp.int32)
    return DraftTree(tokens, parent, depth, mask, None, self.max_depth), state


# ------------------------------------------------------------------ self-speculation and staged

@dataclasses.dataclass(frozen=True)
class SelfSpec(_DraftNetwork):
  """The target's first `exit_layer` layers + its final norm and LM head."""
  exit_layer: int = 8
  name = "self-spec"

  def validate(self):
    super().validate()
    if self.exit_layer < 1:
      raise ValueError(f"{self.name}: exit_layer must be a positive integer, got {self.exit_layer}")

  def check_target(self, target):
    super().check_target(target)
    if self.exit_layer > target.cfg.layers:
      raise ValueError(f"{self.name}: exit_layer {self.exit_layer} exceeds the target's {target.cfg.layers} layers")

  def _module(self, m):
    return m.target

  def _stop(self, m):
    return self.exit_layer


@dataclasses.dataclass(frozen=True)
class Staged(SelfSpec):
  """Self-speculation sped up by prompt lookup (`lookup` tokens, n-grams up to `max_ngram`), as a tree."""
  lookup: int = 4
  max_ngram: int = 3
  name = "staged"

  def validate(self):
    super().validate()
    if not 1 <= self.lookup <= 64 or not 1 <= self.max_ngram <= 64:
      raise ValueError(f"{self.name}: lookup and max_ngram must be integers in [1, 64], got {self.lookup}, {self.max_ngram}")
    if self.width != 1 or self.temperature != 0:
      raise ValueError(f"{self.name}: drafts a deterministic tree of its own; width must be 1 and temperature 0")


# ------------------------------------------------------------------ an independent draft model

@dataclasses.dataclass(frozen=True)
class DraftModel(_DraftNetwork):
  """An independent Llama-family model with the target's tokenizer. Its weights are the drafter's
  params (program arguments); `cfg` and `tokens` (vocabulary size, EOS ids, BOS id) are set at load."""
  model: str = "default"        # a path specjax.load reads, or "default"
  draft_layers: int = 0         # keep only the model's first N layers (0: all)
  cfg: ModelConfig | None = dataclasses.field(default=None, metadata=NOT_OPTION)
  tokens: tuple = dataclasses.field(default=(), metadata=NOT_OPTION)
  graph: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False, metadata=NOT_OPTION)
  name = "draft-model"

  def validate(self):
    super().validate()
    if self.draft_layers < 0:
      raise ValueError(f"{self.name}: draft_layers must be >= 0, got {self.draft_layers}")

  @property
  def graphdef(self):
    return self.graph

  def _module(self, m):
    return m.drafter

  def check_target(self, target):
    super().check_target(target)
    if self.params is None or self.cfg is None:
      raise ValueError(f"{self.name}: no weights; build it with DraftModel.load or DraftModel.from_target")
    want = _tokens_of(target)
    if tuple(self.tokens) != want:
      raise ValueError(f"{self.name}: the draft model {self.model!r} does not share the target's tokenizer: "
                       f"vocabulary size, EOS ids, BOS id {tuple(self.tokens)} against the target's {want}")

  @classmethod
  def from_target(cls, target, *, draft_layers: int = 0, **options) -> "DraftModel":
    """A loaded `specjax.io.Target` as the draft (its first `draft_layers` layers when > 0)."""
    layers = draft_layers
    model = target.model
    cfg = model.cfg
    if 0 < layers < cfg.layers:
      cfg = dataclasses.replace(cfg, layers=layers)
      w = {n: np.asarray(model.stacked(n)) for n in weight_shapes(model.cfg)}
      w = {n: (x[:layers] if n in LAYER_WEIGHTS else x) for n, x in w.items()}
      model = Llama(cfg, w, dtype=model.dtype)
    graph, params = nnx.split(model)
    return cls(model=str(target.path), draft_layers=layers, cfg=cfg, tokens=_tokens_of(target), graph=graph,
               params=params, **options)

  @classmethod
  def load(cls, model: str = "default", **options) -> "DraftModel":
    """Reads the draft model from `model` (a path or "default"), float32 like the CPU default target."""
    from specjax import io as sio
    check_option_types(cls(model=model, **options))      # wrong option types are refused before reading
    return cls.from_target(sio.load(model), **options)


def _tokens_of(target) -> tuple:
  tok = target.tokenizer
  return (int(target.cfg.vocab), tuple(sorted(int(i) for i in tok.eos_ids)),
          None if tok.bos_id is None else int(tok.bos_id))
