"""Prefill cost: the prompt's forward (the time to first token, less sampling) against transformers.

    python benchmarks/prefill_cost.py [--lengths 64,256,1024,2048] [--out bench_out/prefill_cost.json]

For each prompt length P, in one run: specjax's prefill as `decode.run` does it (one forward of P tokens
with no cache, then the cache write into the buffer), in float32 and with bfloat16 weights; the same in
chunks of C tokens through the cache (`--chunks`); with each query-block size of the prefill's attention
(`--blocks`, `llama.PREFILL_BLOCK`; 0 = one block, every query against every key); transformers' forward of the same P tokens (float32,
SDPA attention, use_cache=True) on the same weights. Median of `--reps` calls after a compiling one.
"""
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import median_ms, parser, save  # noqa: E402

import specjax  # noqa: E402
from specjax import io as sio  # noqa: E402
from specjax.cache import KVCache  # noqa: E402
from specjax.models import llama  # noqa: E402
from specjax.models.llama import causal_mask  # noqa: E402


def median_s(fn, reps):
  return median_ms(fn, reps=reps) / 1e3


def specjax_prefill(t, P, S, chunk, reps):
  """Seconds for the prefill of P tokens into an S-long cache, whole (chunk=None) or C tokens a forward."""
  cfg = t.cfg
  gd, params = nnx.split(t.model)
  C = P if chunk is None else chunk

  @jax.jit
  def prefill(params, tokens):
    model = nnx.merge(gd, params)
    cache = KVCache.zeros(layers=cfg.layers, batch=1, max_len=S, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim)
    if chunk is None:
      out = model(tokens, jnp.arange(P)[None], None, causal_mask(1, P))
      return cache.write(out.k, out.v).advance(jnp.full((1,), P)), out.hidden[:, -1]
    for i in range(0, P, C):     # chunks read the cache written so far
      out = model(tokens[:, i:i + C], jnp.arange(i, i + C)[None], cache, causal_mask(1, C))
      cache = cache.write(out.k, out.v).advance(jnp.full((1,), C))
    return cache, out.hidden[:, -1]

  tokens = jnp.asarray(np.random.default_rng(0).integers(100, cfg.vocab - 100, (1, P)), jnp.int32)
  return median_s(lambda: prefill(params, tokens), reps)


def hf_prefill(P, reps):
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(os.cpu_count())
  p = sio.default_model_path()
  m = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
  x = torch.tensor(np.random.default_rng(0).integers(100, 49000, (1, P)))
  with torch.no_grad():
    return median_s(lambda: m(x, use_cache=True).logits[:, -1], reps)


def main():
  ap = parser(__doc__, "bench_out/prefill_cost.json", target=False)
  ap.add_argument("--lengths", default="64,256,1024,2048")
  ap.add_argument("--chunks", default="", help="chunk sizes to try, e.g. 256 ('' for none)")
  ap.add_argument("--blocks", default="256,0", help="PREFILL_BLOCK values to compare (0: one block)")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--no-hf", action="store_true")
  a = ap.parse_args()
  lengths = [int(x) for x in a.lengths.split(",")]
  chunks = [int(x) for x in a.chunks.split(",") if x]
  blocks = [int(x) for x in a.blocks.split(",")]
  rows = []
  for dtype in ("float32", "bfloat16"):
    t = specjax.load("default", dtype=dtype)
    for P in lengths:
      S = P + 192
      for blk in blocks:
        llama.PREFILL_BLOCK = blk or 10**9          # read when the prefill is traced
        for c in [None] + [c for c in chunks if c < P and P % c == 0]:
          s = specjax_prefill(t, P, S, c, a.reps)
          rows.append(dict(who="specjax", dtype=dtype, P=P, block=blk, chunk=c, s=s, tokens_per_s=P / s))
          print(rows[-1], flush=True)
    del t
  if not a.no_hf:
    for P in lengths:
      s = hf_prefill(P, a.reps)
      rows.append(dict(who="transformers", dtype="float32", P=P, chunk=None, s=s, tokens_per_s=P / s))
      print(rows[-1], flush=True)
  save(a.out, dict(rows=rows))


if __name__ == "__main__":
  main()
