"""Attention over the cache alone (one layer, float32): the same math written several ways, to choose the
one XLA:CPU runs fastest. cur: the cache layout [B, S, KVH, D] (the library's before issue 10), einsum;
the others use [B, KVH, S, D]: new: einsum with the G query heads of a KV
head and the T tokens as separate axes; new_merged (the library's, models/llama.py): G*T merged into one
M axis, dot_general batched over (b, k); mr_t: multiply-reduce over keys stored [B, KVH, D, S];
vmapped: per-(b, k) 2-D dots.

    python benchmarks/experiments/attention_variants.py cur,new,new_merged,mr_t,vmapped
"""
import time, sys, jax, jax.numpy as jnp, numpy as np
K, G, D = 3, 3, 64
def cur(q, kc, vc, live):   # kc [B,S,K,D]
  s = jnp.einsum("btkgd,bskd->bkgts", q, kc)
  p = jax.nn.softmax(jnp.where(live, s, -1e30), -1)
  return jnp.einsum("bkgts,bskd->btkgd", p, vc)
def new(q, kc, vc, live):   # kc [B,K,S,D]
  s = jnp.einsum("btkgd,bksd->bkgts", q, kc)
  p = jax.nn.softmax(jnp.where(live, s, -1e30), -1)
  return jnp.einsum("bkgts,bksd->btkgd", p, vc)
def new_merged(q, kc, vc, live):   # explicit [B,K,G*T,D] queries, dot_general
  B,T = q.shape[:2]
  qq = jnp.transpose(q, (0,2,3,1,4)).reshape(B, K, G*T, D)
  s = jax.lax.dot_general(qq, kc, (((3,),(3,)),((0,1),(0,1))))   # b k m s
  p = jax.nn.softmax(jnp.where(live.reshape(B,1,1,-1), s, -1e30), -1)
  o = jax.lax.dot_general(p, vc, (((3,),(2,)),((0,1),(0,1))))    # b k m d
  return jnp.transpose(o.reshape(B,K,G,T,D), (0,3,1,2,4))
def mr_t(q, kc, vc, live):  # kc [B,K,D,S]; v [B,K,S,D]
  qq = jnp.transpose(q, (0,2,3,1,4))  # b k g t d
  s = (qq[..., :, None] * kc[:, :, None, None, :, :]).sum(-2)  # b k g t s
  p = jax.nn.softmax(jnp.where(live, s, -1e30), -1)
  o = jnp.einsum("bkgts,bksd->btkgd", p, vc)
  return o
def vmapped(q, kc, vc, live):  # per (b,k) 2-D dots
  B,T = q.shape[:2]
  qq = jnp.transpose(q, (0,2,3,1,4)).reshape(B*K, G*T, D)
  kk = kc.reshape(B*K, -1, D); vv = vc.reshape(B*K, -1, D)
  lv = jnp.repeat(live.reshape(B, 1, -1), K, 0)
  def one(qm, km, vm, l):
    s = qm @ km.T
    p = jax.nn.softmax(jnp.where(l, s, -1e30), -1)
    return p @ vm
  o = jax.vmap(one)(qq, kk, vv, lv)
  return jnp.transpose(o.reshape(B,K,G,T,D), (0,3,1,2,4))
V = dict(cur=(cur,"bskd"), new=(new,"bksd"), new_merged=(new_merged,"bksd"), mr_t=(mr_t,"bkds"), vmapped=(vmapped,"bksd"))
names = sys.argv[1].split(",")
for B, S in ((1, 320), (1, 2112), (4, 384), (16, 384), (32, 384)):
  for T in (1, 8):
    q = jnp.ones((B, T, K, G, D)) * .1
    live = jnp.ones((B, 1, 1, 1, S), bool)
    out = []
    for name in names:
      f, kl = V[name]
      dims = dict(b=B, s=S, k=K, d=D)
      kc = jnp.asarray(np.random.default_rng(0).standard_normal([dims[c] for c in kl], np.float32))
      vshape = (B, S, K, D) if name == "cur" else (B, K, S, D)
      vc = jnp.asarray(np.random.default_rng(1).standard_normal(vshape, np.float32))
      jf = jax.jit(f); jf(q, kc, vc, live).block_until_ready()
      ts = []
      for _ in range(30):
        s0 = time.perf_counter(); jf(q, kc, vc, live).block_until_ready(); ts.append(time.perf_counter() - s0)
      out.append(f"{name} {1e3*np.median(ts):.3f}")
    print(f"B={B} S={S} T={T}: " + "  ".join(out) + " ms per layer", flush=True)
