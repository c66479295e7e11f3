"""Cost of one self-speculation draft call (batch 1, one token, 256 cached positions) per exit layer K,
three ways in the same run: "slice", Llama.layers before the fix (the first K layers sliced out of the
stacked weights, which copies them every call); "index", the scan reading each layer from the full
stacks (Llama.layers now); "index+v4096", that with the LM head restricted to 4096 rows gathered per
call (the early-exit drafter's draft vocabulary). K = 30 is the whole model (a plain decode step).
Also the whole model at T = 2, 3, 4 tokens (a chain's verify at gamma 1, 2, 3). Best of 20
interleaved runs, ms: on a shared machine interleaving keeps the columns comparable.

With --agreement (early_exit_agreement.py's JSON), the chain estimate per exit layer, head and gamma:
tau = 1 + a + ... + a^gamma (acceptances independent), step = gamma draft calls + the verify,
speedup = tau x (plain step) / step; plain head: the "index" cost and the plain exit's agreement,
adapter: the "index+v4096" cost and the adapter's.

    python benchmarks/draft_call_cost.py 8 12 16 20 --agreement benchmarks/results/early_exit_agreement.json \
        --out benchmarks/results/draft_call_cost.json
"""
import argparse
import time, sys, json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
import specjax
sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
from common import machine  # noqa: E402
from specjax.cache import KVCache
from specjax.models.llama import LAYER_WEIGHTS, causal_mask, decoder_layer

t = specjax.load("default")
gd, params = nnx.split(t.model)
cfg = t.cfg

def run_layers(mod, x, positions, cache, mask, stop, mode):
  cos, sin = mod.rope(positions)
  new_mask = mask[:, None, None]
  live = (jnp.arange(cache.max_len)[None, :] < cache.lengths[:, None])[:, None, None, None, :]
  full = {n: mod.stacked(n) for n in LAYER_WEIGHTS if hasattr(mod, n)}
  kv = (cache.k[:stop], cache.v[:stop])
  if mode == "slice":
    w = {n: a[:stop] for n, a in full.items()}
    def body(x, xs):
      wl, kvl = xs
      x, k, v = decoder_layer(cfg, wl, x, cos, sin, kvl, new_mask, live, mod.dtype)
      return x, (k, v)
    x, (k, v) = jax.lax.scan(body, x, (w, kv))
  else:
    def body(x, xs):
      i, kvl = xs
      wl = {n: jax.lax.dynamic_index_in_dim(a, i, keepdims=False) for n, a in full.items()}
      x, k, v = decoder_layer(cfg, wl, x, cos, sin, kvl, new_mask, live, mod.dtype)
      return x, (k, v)
    x, (k, v) = jax.lax.scan(body, x, (jnp.arange(stop), kv))
  return x, k, v

def make(stop, mode, T=1, vocab=0):
  cache = KVCache.zeros(layers=stop, batch=1, max_len=512, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim)
  cache = KVCache(cache.k + 0.01, cache.v + 0.01, jnp.full((1,), 256, jnp.int32))
  tok = jnp.ones((1, T), jnp.int32); pos = 256 + jnp.arange(T)[None]
  @jax.jit
  def f(p, cache, tok):
    mod = nnx.merge(gd, p)
    x, k, v = run_layers(mod, mod.embed_tokens(tok), pos, cache, causal_mask(1, T), stop, mode)
    if vocab:
      small = mod.head(mod.norm(x[:, -1]), mod.head_weight(jnp.arange(vocab) * 11))     # gathered per call, as EarlyExit
      return small, cache.write(k, v)
    return mod.logits(x[:, -1]), cache.write(k, v)
  f(params, cache, tok)[0].block_until_ready()
  return lambda: f(params, cache, tok)[0].block_until_ready(), f.lower(params, cache, tok).compile().as_text()

ap = argparse.ArgumentParser()
ap.add_argument("exits", nargs="*", type=int, default=[4, 8, 16])
ap.add_argument("--agreement")
ap.add_argument("--out")
args = ap.parse_args()
Ks = sorted(set(args.exits) | {30})
fns, hlo = {}, {}
for K in Ks:
  for mode in ("slice", "index"):
    fns[K, mode], hlo[K, mode] = make(K, mode)
  fns[K, "index+v4096"], hlo[K, "index+v4096"] = make(K, "index", vocab=4096)
for T in (2, 3, 4):
  fns[30, f"T{T}"], _ = make(30, "index", T=T)
for (K, mode), h in hlo.items():
  print(K, mode, "slice ops on weights:", sum(1 for l in h.splitlines() if " slice(" in l and "f32[%d," % K in l))
best = {k: 1e9 for k in fns}
for r in range(20):
  for k, f in fns.items():
    t0 = time.perf_counter(); f(); best[k] = min(best[k], (time.perf_counter() - t0) * 1e3)
rows = [dict(K=K, slice_ms=round(best[K, "slice"], 2), index_ms=round(best[K, "index"], 2),
             index_v4096_ms=round(best[K, "index+v4096"], 2)) for K in Ks]
verify = {T - 1: round(best[30, f"T{T}"], 2) for T in (2, 3, 4)}
for r in rows:
  print(json.dumps(r))
print(json.dumps({"verify_ms_by_gamma": verify}))
out = {"machine": machine(), "rows": rows, "verify_ms_by_gamma": verify}
if args.agreement:
  ar = best[30, "index"]
  cost = {r["K"]: r for r in rows}
  est = []
  for a in json.load(open(args.agreement))["rows"]:
    K = a["exit_layer"]
    for head, acc, ms in (("plain", a["plain_top1"], cost[K]["index_ms"]), ("adapter", a["adapter_top1"], cost[K]["index_v4096_ms"])):
      for g in (1, 2, 3):
        tau = sum(acc ** i for i in range(g + 1))
        est.append(dict(exit_layer=K, head=head, gamma=g, accept=round(acc, 4), draft_share_of_ar=round(ms / ar, 3),
                        est_tau=round(tau, 3), est_speedup=round(tau * ar / (g * ms + verify[g]), 3)))
        print(json.dumps(est[-1]))
  out["estimates"] = est
if args.out:
  open(args.out, "w").write(json.dumps(out, indent=1))
