"""Attention over the cache alone (one layer: q . K, softmax, . V), float32, the cache layout [B, S, KVH, D] (the
library's) against [B, KVH, S, D], for a few batch sizes, buffer lengths S and T.

    python benchmarks/attention_layout.py
"""
import time, sys, jax, jax.numpy as jnp, numpy as np
K, G, D = 3, 3, 64
def cur(q, kc, vc, live):   # q [B,T,K,G,D]; kc [B,S,K,D]
  s = jnp.einsum("btkgd,bskd->bkgts", q, kc, preferred_element_type=jnp.float32)
  s = jnp.where(live, s, -1e30)
  p = jax.nn.softmax(s, -1)
  return jnp.einsum("bkgts,bskd->btkgd", p, vc)
def new(q, kc, vc, live):   # kc [B,K,S,D]
  s = jnp.einsum("btkgd,bksd->bkgts", q, kc, preferred_element_type=jnp.float32)
  s = jnp.where(live, s, -1e30)
  p = jax.nn.softmax(s, -1)
  return jnp.einsum("bkgts,bksd->btkgd", p, vc)
for B, S in ((1, 384), (1, 4160), (16, 896), (32, 896)):
  for T in (1, 8):
    q = jnp.ones((B, T, K, G, D)) * .1
    live = jnp.ones((B, 1, 1, 1, S), bool)
    out = []
    for name, f, shape in (("cur", cur, (B, S, K, D)), ("new", new, (B, K, S, D))):
      kc = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
      jf = jax.jit(f); jf(q, kc, kc, live).block_until_ready()
      ts = []
      for _ in range(20):
        s0 = time.perf_counter(); jf(q, kc, kc, live).block_until_ready(); ts.append(time.perf_counter() - s0)
      out.append(f"{name} {1e3*np.median(ts):.3f}")
    print(f"B={B} S={S} T={T}: " + "  ".join(out) + " ms per layer", flush=True)
