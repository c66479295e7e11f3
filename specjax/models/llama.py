"""The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2) as one Flax NNX module.

Each layer's weights are their own arrays and the layers run as an unrolled Python loop. A `lax.scan`
over weights stacked on a layer axis compiles one layer body instead of L, but on the CPU every step of
the scan copied its layer's weights out of the stacks before the matmuls could read them (XLA cannot
hand a dynamic slice to a dot in place): a decode step read and wrote the weights three times instead
of reading them once (docs/MEASUREMENTS.md#layers-unrolled). The canonical (loader) layout keeps the layer axis
(`weight_info`); the model splits it at load and `stacked` puts it back.
q/k/v and gate/up are fused into single matmuls: on CPU, few wide matmuls beat many narrow ones. Their
layouts keep the KV-head axis and the gate/up axis apart (io/packing.py), so a split of heads or FFN
columns over a device mesh never cuts across q/k/v or gate/up (`weight_info` declares the axes).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import numerics
from specjax.cache import KVCache
from specjax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
  """One array declared once: its shape, dtype and logical axes, one name per dimension (as jax-llm-examples'
  ArrayInfo and MaxText's kernel_axes). A logical axis says what a dimension is ("vocab", "kv_heads", ...);
  one table (parallel/rules.py) says which mesh axis splits it, so no declaration names a mesh."""
  shape: tuple[int, ...]
  dtype: object
  axes: tuple[str, ...]

  def __post_init__(self):
    if len(self.shape) != len(self.axes):
      raise ValueError(f"shape {self.shape} declared with {len(self.axes)} logical axes {self.axes}")


def weight_info(cfg: ModelConfig, dtype=jnp.float32) -> dict[str, ArrayInfo]:
  """Every target weight, declared once: canonical (loader) shape ([in, out] for matmuls), dtype (norms in
  float32, the rest in `dtype`) and logical axes. Layer weights lead with a "layers" axis; the model holds
  each layer's slice as an array of its own (see the module docstring)."""
  L, H, F, V = cfg.layers, cfg.hidden, cfg.ffn, cfg.vocab
  K, G, D = cfg.kv_heads, cfg.heads // cfg.kv_heads, cfg.head_dim
  w = lambda shape, *axes: ArrayInfo(shape, dtype, axes)
  norm = lambda shape, *axes: ArrayInfo(shape, jnp.float32, axes)
  info = {
      "embed": w((V, H), "vocab", "embed"),
      # per KV head: its G query heads, its key, its value (io/packing.py)
      "wqkv": w((L, H, K, G + 2, D), "layers", "embed", "kv_heads", "qkv", "head_dim"),
      # rows: query heads in order, so KV group k is rows [k*G*D, (k+1)*G*D): split by KV-head group
      "wo": w((L, cfg.heads * D, H), "layers", "kv_heads", "embed"),
      "w_gate_up": w((L, H, 2, F), "layers", "embed", "gate_up", "ffn"),
      "w_down": w((L, F, H), "layers", "ffn", "embed"),
      "attn_norm": norm((L, H), "layers", "embed"),
      "mlp_norm": norm((L, H), "layers", "embed"),
      "final_norm": norm((H,), "embed"),
  }
  if cfg.qkv_bias:
    info["bqkv"] = w((L, K, G + 2, D), "layers", "kv_heads", "qkv", "head_dim")
  if not cfg.tie_embeddings:
    info["lm_head"] = w((H, V), "embed", "vocab")
  return info


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """{weight name: canonical shape}, from `weight_info`."""
  return {name: i.shape for name, i in weight_info(cfg).items()}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Output:
  """logits [B, T, V] float32; hidden [B, T, H]: the last residual, before the final norm;
  layer_hidden: {layer index: [B, T, H]} residual stream after each captured layer;
  k, v: fresh keys/values of the T tokens, [L, B, T, KVH, D], not yet in the cache."""
  logits: jax.Array
  hidden: jax.Array
  layer_hidden: dict
  k: jax.Array
  v: jax.Array


def rms_norm(x, w, eps):
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * w.astype(jnp.float32)).astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
  """[D/2] inverse frequencies, with Llama-3 scaling when configured."""
  d = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
  s = cfg.rope_scaling
  if s is not None:
    low_wl = s.original_max_position / s.low_freq_factor
    high_wl = s.original_max_position / s.high_freq_factor
    wl = 2 * math.pi / inv
    smooth = (s.original_max_position / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    scaled = np.where(wl > low_wl, inv / s.factor, inv)
    mid = (wl <= low_wl) & (wl >= high_wl)
    inv = np.where(mid, (1 - smooth) * inv / s.factor + smooth * inv, scaled)
  return inv.astype(np.float32)


def apply_rope(x, cos, sin):
  """x [B, T, N, D] in the split-half layout; cos, sin [B, T, D/2]."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def causal_mask(batch: int, t: int) -> jax.Array:
  """[B, T, T] lower-triangular mask for ordinary (chain) decoding."""
  return jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (batch, t, t))


def _proj(eq, x, w):
  """A weight matmul: activations x [B, T, ...] (float32) times w stored in float32 or bfloat16,
  accumulated and returned in float32.

  bfloat16 weights: x is split into two bfloat16 parts, x = hi + lo (hi = x rounded, lo = the rest
  rounded), stacked on the token axis and multiplied in ONE matmul (the weights are read once). That
  carries x to about 16 bits instead of 8: a one-token and a multi-token forward, whose float32 inputs
  differ only by summation order, then round to the same matmul inputs nearly always. Rounding x to
  bfloat16 alone turned those tiny differences into rounding jumps that 30 layers amplified into changed
  tokens (docs/MEASUREMENTS.md#bfloat16-hi-lo). It is also XLA:CPU's fast path on AMX /
  AVX-512-BF16 CPUs, which runs a one-row bfloat16 dot on a slow generic kernel: here T = 1 is two rows."""
  if w.dtype != jnp.bfloat16:
    return numerics.einsum(eq, x, w, preferred_element_type=jnp.float32)
  hi = x.astype(jnp.bfloat16)
  lo = (x - hi.astype(x.dtype)).astype(jnp.bfloat16)
  T = x.shape[1]
  y = numerics.einsum(eq, jnp.concatenate([hi, lo], axis=1), w, preferred_element_type=jnp.float32)
  return y[:, :T] + y[:, T:]


def decoder_layer(cfg: ModelConfig, w: dict, x, cos, sin, kv, new_mask, live):
  """One decoder layer. x [B, T, H] float32 (the residual stream; see `_proj`); w: this layer's weights
  (see `weight_info`, layer axis removed); cos, sin [B, T, D/2]; kv: this layer's cached (k, v)
  [B, KVH, S, D] or None; new_mask [B, 1, 1, T, T]; live [B, 1, 1, 1 or T, S] (which cached keys are
  valid, for all or for each new token) or None. Returns (x, k, v): the new residual and the T fresh
  keys/values [B, T, KVH, D]."""
  B, T, _ = x.shape
  N, K, D = cfg.heads, cfg.kv_heads, cfg.head_dim
  G = N // K
  scale = 1.0 / math.sqrt(D)
  neg = jnp.float32(-1e30)
  h = rms_norm(x, w["attn_norm"], cfg.norm_eps)
  qkv = _proj("bth,hkcd->btkcd", h, w["wqkv"])                             # one matmul: [B, T, K, G+2, D]
  if cfg.qkv_bias:
    qkv = qkv + w["bqkv"].astype(qkv.dtype)
  q = apply_rope(qkv[..., :G, :].reshape(B, T, N, D), cos, sin).reshape(B, T, K, G, D)
  k = apply_rope(qkv[..., G, :], cos, sin)
  v = qkv[..., G + 1, :]
  # Each KV head's G*T queries form one [G*T, D] matrix (rows g-major): a dot batched over (b, k) with
  # an explicit M = G*T is XLA:CPU's fastest form (docs/MEASUREMENTS.md#attention-one-dot-per-kv-head).
  qt = jnp.transpose(q, (0, 2, 3, 1, 4))                                        # [B, K, G, T, D]
  qm = qt.reshape(B, K, G * T, D)
  rows = lambda m: jnp.broadcast_to(m, (B, 1, G, T, m.shape[-1])).reshape(B, 1, G * T, m.shape[-1])
  k_new, v_new = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)                 # [B, K, T, D]
  if kv is None:
    o = _causal_attention(qt, k_new, v_new, new_mask, scale)
  else:   # one softmax over [cache | new] without concatenating them
    kc, vc = kv
    s_new = jnp.where(rows(new_mask), _bdot(qm, k_new, 3, 3) * scale, neg)       # [B, K, G*T, T]
    s_old = jnp.where(rows(live), _bdot(qm, kc, 3, 3) * scale, neg)              # [B, K, G*T, S]
    mx = jnp.maximum(s_old.max(-1, keepdims=True), s_new.max(-1, keepdims=True))
    e_old, e_new = jnp.exp(s_old - mx), jnp.exp(s_new - mx)
    o = (_bdot(e_old, vc, 3, 2) + _bdot(e_new, v_new, 3, 2)) / (e_old.sum(-1, keepdims=True) + e_new.sum(-1, keepdims=True))
  o = jnp.transpose(o.reshape(B, K, G, T, D), (0, 3, 1, 2, 4))                  # [B, T, K, G, D]
  x = x + _proj("bti,io->bto", o.reshape(B, T, N * D), w["wo"])
  h = rms_norm(x, w["mlp_norm"], cfg.norm_eps)
  gate_up = _proj("bth,hcf->btcf", h, w["w_gate_up"])                       # one matmul: [B, T, 2, F]
  x = x + _proj("btf,fh->bth", jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1], w["w_down"])
  return x, k, v


def _bdot(a, b, ca: int, cb: int):
  """a dot batched over the leading (row, KV head) axes, contracting a's axis ca with b's axis cb."""
  return numerics.dot_general(a, b, (((ca,), (cb,)), ((0, 1), (0, 1))))


PREFILL_BLOCK = 256    # query tokens per block of `_causal_attention`


def _causal_attention(q, k, v, mask, scale):
  """Attention of T tokens among themselves (no cache: a prefill). q [B, K, G, T, D]; k, v [B, K, T, D];
  mask [B, 1, 1, T, T], which must be causal (token i sees only tokens j <= i, as in a prefill or a
  tree in topological order). Returns [B, K, G*T, D], rows g-major.

  Queries go in blocks of PREFILL_BLOCK tokens, each against the keys up to its own end: the blocks
  above the diagonal, about half of a long prompt's attention, are never computed. The softmax is
  normalised after the value product ([M, D] divides instead of [M, T])."""
  B, K, G, T, D = q.shape
  neg = jnp.float32(-1e30)
  outs = []
  for a in range(0, T, PREFILL_BLOCK):
    b = min(a + PREFILL_BLOCK, T)
    qb = q[:, :, :, a:b].reshape(B, K, G * (b - a), D)
    m = jnp.broadcast_to(mask[..., a:b, :b], (B, 1, G, b - a, b)).reshape(B, 1, G * (b - a), b)
    s = jnp.where(m, _bdot(qb, k[:, :, :b], 3, 3) * scale, neg)                 # [B, K, G*C, b]
    e = jnp.exp(s - s.max(-1, keepdims=True))
    outs.append((_bdot(e, v[:, :, :b], 3, 2) / e.sum(-1, keepdims=True)).reshape(B, K, G, b - a, D))
  return jnp.concatenate(outs, axis=3).reshape(B, K, G * T, D)


LAYER_WEIGHTS = ("wqkv", "wo", "w_gate_up", "w_down", "attn_norm", "mlp_norm", "bqkv")


class Llama(nnx.Module):
  """Target model. Call it with tokens [B, T], positions [B, T], a KVCache (or None for an empty
  one) and a mask [B, T, T] over the new tokens (mask[b, i, j]: token i sees token j).

  Its pieces are public so drafters reuse them instead of copying code: `embed_tokens`, `layers`
  (any range [start, stop) of decoder layers, `decoder_layer` per layer), `norm` (the final
  RMSNorm), `head` (the LM head on a normed state) and `logits` (norm + head). Hidden states:
  `Output.hidden` is the last residual BEFORE the final norm; `norm(hidden)` is the normed state
  the LM head reads (what Hugging Face's model output and the Medusa/EAGLE trainers call the last
  hidden state).

  `weights` (canonical names and shapes, see `weight_info`) is consumed: entries are popped as they are
  moved to the device, so loading never holds two full copies. shardings: {weight name: Sharding} of each
  array as the model holds it (a layer weight: one layer's slice), chosen by the caller (for a mesh:
  specjax.program.sharded.weight_shardings); each device then receives only its own shards. None: the
  default device."""

  def __init__(self, cfg: ModelConfig, weights: dict[str, np.ndarray] | None = None, *,
               dtype=jnp.float32, seed: int = 0, shardings: dict | None = None):
    self.cfg = cfg
    self.dtype = dtype
    info = weight_info(cfg, dtype)
    if weights is None:
      weights = _random_weights(weight_shapes(cfg), seed)
    missing = set(info) - set(weights)
    if missing:
      raise ValueError(f"missing weights: {sorted(missing)}")
    for name, i in info.items():
      w = weights.pop(name)     # consumed tensor by tensor: host copies are freed as we go
      if tuple(w.shape) != i.shape:
        raise ValueError(f"weight {name} has shape {tuple(w.shape)}, expected {i.shape}")
      s = None if shardings is None else shardings[name]
      if name in LAYER_WEIGHTS:        # one array per layer (see the module docstring)
        setattr(self, name, nnx.List([nnx.Param(_place(w[j], i.dtype, s)) for j in range(cfg.layers)]))
      else:
        setattr(self, name, nnx.Param(_place(w, i.dtype, s)))
      del w
    self.inv_freq = nnx.Variable(jnp.asarray(rope_frequencies(cfg)))

  def stacked(self, name: str) -> jax.Array:
    """A weight in its canonical layout (`weight_info`): layer weights stacked on a leading [L] axis."""
    a = getattr(self, name)
    return jnp.stack([p[...] for p in a]) if name in LAYER_WEIGHTS else a[...]

  def embed_tokens(self, tokens):
    """tokens [B, T] -> [B, T, H] float32 (activations are float32 whatever the weights' dtype)."""
    return self.embed[...][tokens].astype(jnp.float32)

  def rope(self, positions):
    """positions [B, T] -> (cos, sin) [B, T, D/2]."""
    ang = positions.astype(jnp.float32)[..., None] * self.inv_freq[...]
    return jnp.cos(ang), jnp.sin(ang)

  def layers(self, x, positions, cache: KVCache | None, mask, *, start: int = 0, stop: int | None = None,
             capture=()):
    """Runs decoder layers [start, stop) over x [B, T, H], each reading its own weights in place.

    cache: the KVCache of ALL layers (or None); layer i reads cache.k[i]. Returns (x, k, v, captured):
    k, v [stop-start, B, T, KVH, D] fresh keys/values; captured {layer index: [B, T, H]} the residual
    after each layer named in `capture` (absolute indices in [start, stop))."""
    cfg = self.cfg
    stop = cfg.layers if stop is None else stop
    cos, sin = self.rope(positions)
    new_mask = mask[:, None, None, :, :]                                    # [B,1,1,T,T]
    live = None
    if cache is not None:
      live = (jnp.arange(cache.max_len)[None, :] < cache.lengths[:, None])[:, None, None, None, :]
    names = [n for n in LAYER_WEIGHTS if hasattr(self, n)]
    ks, vs, captured = [], [], {}
    for i in range(start, stop):
      wl = {n: getattr(self, n)[i][...] for n in names}
      kvl = None if cache is None else (cache.k[i], cache.v[i])
      x, k, v = decoder_layer(cfg, wl, x, cos, sin, kvl, new_mask, live)
      ks.append(k)
      vs.append(v)
      if i in capture:
        captured[i] = x
    return x, jnp.stack(ks), jnp.stack(vs), captured

  def norm(self, h):
    """The final RMSNorm: last residual [..., H] -> the normed state the LM head reads."""
    return rms_norm(h, self.final_norm[...], self.cfg.norm_eps)

  def head_weight(self, rows=None):
    """[H, V] LM head (the embedding, transposed, when tied); with rows [N] token ids, only those N
    columns [H, N] (a reduced draft vocabulary)."""
    if rows is None:
      return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
    return self.embed[...][rows].T if self.cfg.tie_embeddings else self.lm_head[...][:, rows]

  def head(self, hn, weight=None):
    """Normed state [..., H] -> float32 logits [..., V] (or [..., N] with a `head_weight(rows)`)."""
    x = hn.reshape(1, -1, hn.shape[-1])
    if weight is None and self.cfg.tie_embeddings:   # read the embedding in place: its transpose is a copy
      y = _proj("bth,vh->btv", x, self.embed[...])
    else:
      y = _proj("bth,hv->btv", x, self.head_weight() if weight is None else weight)
    return y.reshape(hn.shape[:-1] + y.shape[-1:])

  def logits(self, h):
    """Last residual [..., H] -> float32 logits [..., V]."""
    return self.head(self.norm(h))

  def __call__(self, tokens, positions, cache: KVCache | None, mask, *, capture=()) -> Output:
    x = self.embed_tokens(tokens)
    x, k, v, captured = self.layers(x, positions, cache, mask, capture=capture)
    return Output(self.logits(x), x, captured, k, v)


def forward(model: Llama, tokens, positions, cache: KVCache, mask, *, capture=()):
  """Runs the model and appends all T fresh keys/values to the cache.

  Returns (Output, cache) with the cache's lengths advanced by T.
  """
  out = model(tokens, positions, cache, mask, capture=capture)
  cache = cache.write(out.k, out.v).advance(jnp.full((tokens.shape[0],), tokens.shape[1]))
  return out, cache


def _place(w, dtype, sharding):
  if sharding is None:
    # Wait for each host-to-device copy so the host tensor is freed before the next one.
    return jnp.asarray(w, dtype).block_until_ready()
  # Each device receives only its own shard, cut from the host tensor (never a full device copy).
  return jax.make_array_from_callback(w.shape, sharding, lambda idx: np.asarray(w[idx], dtype))


def _random_weights(shapes, seed):
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in shapes.items():
    if name.endswith("norm"):
      out[name] = 1.0 + 0.1 * rng.standard_normal(shape).astype(np.float32)
    else:
      out[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
  return out
