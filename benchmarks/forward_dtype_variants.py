"""Real default-model forward, float32 against bfloat16 variants (as the library had it: bf16 out of each matmul; f32 accumulation, what it does now; f32 accumulation with a one-token matmul padded to two), T = 1, 2, 8, 16, 32; context 256, batch 1.

    PYTHONPATH=. python benchmarks/forward_dtype_variants.py f32|bf16|bf16acc|bf16acc_pad2
"""
import sys, time, math, jax, jax.numpy as jnp, numpy as np
from flax import nnx
import specjax
from specjax.models import llama as L
from specjax.cache import KVCache
variant = sys.argv[1]
orig = L.decoder_layer

def mm_factory(pad):
  def mm(x, w, eq):
    # x [B, T, in] -> f32 accumulation, result in x.dtype
    B, T = x.shape[:2]
    if pad and B * T == 1:
      y = jnp.einsum(eq, jnp.concatenate([x, x], 1), w, preferred_element_type=jnp.float32)[:, :1]
    else:
      y = jnp.einsum(eq, x, w, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)
  return mm

def layer_with(mm):
  def decoder_layer(cfg, w, x, cos, sin, kv, new_mask, live, dtype):
    B, T, _ = x.shape
    N, K, D = cfg.heads, cfg.kv_heads, cfg.head_dim
    G = N // K
    scale = 1.0 / math.sqrt(D)
    neg = jnp.float32(-1e30)
    h = L.rms_norm(x, w["attn_norm"], cfg.norm_eps)
    qkv = mm(h, w["wqkv"], "bth,hkcd->btkcd")
    q = L.apply_rope(qkv[..., :G, :].reshape(B, T, N, D), cos, sin).reshape(B, T, K, G, D)
    k = L.apply_rope(qkv[..., G, :], cos, sin)
    v = qkv[..., G + 1, :]
    s_new = jnp.einsum("btkgd,bukd->bkgtu", q, k, preferred_element_type=jnp.float32) * scale
    s_new = jnp.where(new_mask, s_new, neg)
    kc, vc = kv
    s_old = jnp.einsum("btkgd,bskd->bkgts", q, kc, preferred_element_type=jnp.float32) * scale
    s_old = jnp.where(live, s_old, neg)
    p = jax.nn.softmax(jnp.concatenate([s_old, s_new], axis=-1), axis=-1).astype(dtype)
    S = kc.shape[1]
    o = (jnp.einsum("bkgts,bskd->btkgd", p[..., :S], vc) + jnp.einsum("bkgtu,bukd->btkgd", p[..., S:], v))
    x = x + mm(o.reshape(B, T, N * D), w["wo"], "bti,io->bto")
    h = L.rms_norm(x, w["mlp_norm"], cfg.norm_eps)
    gate_up = mm(h, w["w_gate_up"], "bth,hcf->btcf")
    x = x + mm(jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1], w["w_down"], "btf,fh->bth")
    return x, k, v
  return decoder_layer

dt = "float32" if variant == "f32" else "bfloat16"
if variant == "bf16":      # the matmuls' output in bfloat16, as the library had it before issue 10
  L.decoder_layer = layer_with(lambda x, w, eq: jnp.einsum(eq, x, w))
elif variant == "bf16acc":
  L.decoder_layer = layer_with(mm_factory(False))
elif variant == "bf16acc_pad2":
  L.decoder_layer = layer_with(mm_factory(True))
t = specjax.load("default", dtype=dt); cfg = t.cfg
gd, params = nnx.split(t.model)
fwd = jax.jit(lambda p, tok, pos, c, m: nnx.merge(gd, p)(tok, pos, c, m).logits)
ctx = 256
cache = KVCache.zeros(layers=cfg.layers, batch=1, max_len=ctx + 64, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                      dtype=t.model.dtype).advance(jnp.full((1,), ctx))
res = []
for T in (1, 2, 8, 16, 32):
  args = (params, jnp.zeros((1, T), jnp.int32), ctx + jnp.arange(T)[None], cache, jnp.tril(jnp.ones((T, T), bool))[None])
  jax.block_until_ready(fwd(*args))
  ts = []
  for _ in range(10):
    s = time.perf_counter(); jax.block_until_ready(fwd(*args)); ts.append(time.perf_counter() - s)
  res.append(f"T={T}:{1e3*np.median(ts):.1f}")
print(variant, " ".join(res), flush=True)
