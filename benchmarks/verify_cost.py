"""The verify-cost curve: one target forward over T tree nodes, T = 1..64, at batch 1, 4, 8.

    python benchmarks/verify_cost.py [--dtype float32] [--context 256] [--out bench_out/verify_cost.json]

A speculative step costs one forward of T nodes; on CPU that cost grows with T (small-M matmuls),
so drafters size their trees from this curve.
"""
import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import machine  # noqa: E402

import specjax  # noqa: E402
from specjax.cache import KVCache  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--model", default="default")
  ap.add_argument("--context", type=int, default=256, help="committed tokens in the cache")
  ap.add_argument("--sizes", default="1,2,4,8,16,32,64")
  ap.add_argument("--batches", default="1,4,8")
  ap.add_argument("--out", default="bench_out/verify_cost.json")
  a = ap.parse_args()
  t = specjax.load(a.model, dtype=a.dtype)
  cfg = t.cfg
  gd, params = nnx.split(t.model)

  @jax.jit
  def fwd(params, tokens, positions, cache, mask):
    return nnx.merge(gd, params)(tokens, positions, cache, mask).logits

  rows = []
  for B in map(int, a.batches.split(",")):
    S = a.context + 128
    cache = KVCache.zeros(layers=cfg.layers, batch=B, max_len=S, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                          dtype=t.model.dtype).advance(jnp.full((B,), a.context))
    for T in map(int, a.sizes.split(",")):
      tok = jnp.zeros((B, T), jnp.int32)
      pos = jnp.broadcast_to(a.context + jnp.arange(T), (B, T))
      mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
      fwd(params, tok, pos, cache, mask).block_until_ready()
      best = float("inf")
      for _ in range(5):
        s = time.perf_counter()
        for _ in range(3):
          fwd(params, tok, pos, cache, mask).block_until_ready()
        best = min(best, (time.perf_counter() - s) / 3)
      rows.append(dict(batch=B, T=T, ms=1000 * best))
      print(f"B={B} T={T}: {1000 * best:.1f} ms", flush=True)
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(machine=machine(), command=" ".join(sys.argv), dtype=a.dtype,
                                 context=a.context, rows=rows), indent=1))


if __name__ == "__main__":
  main()
