"""Side by side: the same step figures for two checkouts of specjax, in one run, interleaved.

    python benchmarks/compare_trees.py BASE_DIR NEW_DIR [--rounds 3] [--out bench_out/compare.json]
                                        [--figures forward,decode] [--contexts 256] [--dtype float32]

Each round runs one subprocess per checkout (alternating, so drift in the machine's load hits both)
that measures, on the default model (`--dtype`, float32 by default): the target forward at T = 1, 8, 16 (batch 1, `--contexts`
cached tokens; its compile time too), and `specjax.generate` decode tokens/s, 128 new tokens, greedy,
batch 1 and 4 for the baseline and pld (compile time of the batch-1 baseline program). Medians over rounds.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import parser, save  # noqa: E402

PROMPT = "Write a detailed story about a lighthouse keeper who discovers a hidden map."
CODE_PROMPT = "Write a Python function that parses a CSV file and returns the rows as dictionaries."


def measure(figures, contexts, dtype):
  """Runs inside the subprocess: prints one JSON dict of figures. It uses only what every checkout has
  (load, the model's forward, KVCache, generate), so that old checkouts can be measured too."""
  import time
  import jax
  import jax.numpy as jnp
  from flax import nnx
  import specjax
  from specjax.cache import KVCache
  t = specjax.load("default", dtype=dtype)
  out = {}
  if "forward" in figures:
    gd, params = nnx.split(t.model)
    cfg = t.cfg
    for ctx in contexts:
      cache = KVCache.zeros(layers=cfg.layers, batch=1, max_len=ctx + 64, kv_heads=cfg.kv_heads,
                            head_dim=cfg.head_dim).advance(jnp.full((1,), ctx))
      for T in (1, 8, 16):
        fwd = jax.jit(lambda p, tok, pos, c, m: nnx.merge(gd, p)(tok, pos, c, m).logits)
        args = (params, jnp.zeros((1, T), jnp.int32), ctx + jnp.arange(T)[None], cache,
                jnp.tril(jnp.ones((T, T), bool))[None])
        s = time.perf_counter()
        comp = fwd.lower(*args).compile()
        out[f"compile_fwd_T{T}_s"] = time.perf_counter() - s
        jax.block_until_ready(comp(*args))
        ts = []
        for _ in range(15):
          s = time.perf_counter()
          jax.block_until_ready(comp(*args))
          ts.append(time.perf_counter() - s)
        out[f"fwd_ctx{ctx}_T{T}_ms"] = 1e3 * statistics.median(ts)
  if "decode" in figures:
    for drafter in ("none", "pld"):
      for batch in (1, 4):
        prompts = [PROMPT, CODE_PROMPT] * (batch // 2) if batch > 1 else [CODE_PROMPT]
        g0 = specjax.generate(t, prompts, max_new_tokens=128, drafter=drafter)     # compile + warm
        if drafter == "none" and batch == 1:
          out["compile_generate_s"] = g0.compile_s
        g = specjax.generate(t, prompts, max_new_tokens=128, drafter=drafter)
        out[f"{drafter}_b{batch}_tok_s"] = g.tokens_per_s
        out[f"{drafter}_b{batch}_tokens"] = [len(x) for x in g.token_ids]
  print("FIGURES " + json.dumps(out), flush=True)


def main():
  ap = parser(__doc__, "bench_out/compare.json", target=False)
  ap.add_argument("base")
  ap.add_argument("new")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--figures", default="forward,decode")
  ap.add_argument("--contexts", default="256")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  a = ap.parse_args()
  figures, contexts = a.figures.split(","), [int(c) for c in a.contexts.split(",")]
  if a.child:
    return measure(figures, contexts, a.dtype)
  runs = {"base": [], "new": []}
  for r in range(a.rounds):
    for name in ("base", "new"):
      src = os.path.abspath(getattr(a, name))
      env = dict(os.environ, PYTHONPATH=src, SPECJAX_COMPILATION_CACHE="0")
      p = subprocess.run([sys.executable, __file__, a.base, a.new, "--child", "--figures", a.figures,
                          "--contexts", a.contexts, "--dtype", a.dtype], env=env, capture_output=True, text=True, cwd=src)
      line = [x for x in p.stdout.splitlines() if x.startswith("FIGURES ")]
      if p.returncode or not line:
        sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
      runs[name].append(json.loads(line[0][8:]))
      print(f"round {r} {name}: {runs[name][-1]}", flush=True)
  med = {}
  for name, rs in runs.items():
    med[name] = {k: (statistics.median(x[k] for x in rs) if isinstance(rs[0][k], float) else rs[0][k]) for k in rs[0]}
  print(f"{'figure':28s} {'base':>10s} {'new':>10s} {'new/base':>9s}")
  for k, v in med["base"].items():
    if isinstance(v, float):
      print(f"{k:28s} {v:10.2f} {med['new'][k]:10.2f} {med['new'][k] / v:9.2f}")
    else:
      print(f"{k:28s} same={v == med['new'][k]}")
  save(a.out, dict(base=a.base, new=a.new, medians=med, runs=runs))


if __name__ == "__main__":
  main()
