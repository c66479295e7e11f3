"""Where a target step goes on the CPU: XLA's own per-operation trace of one forward over T tokens.

    python benchmarks/profile_step.py [--sizes 1,8] [--context 256] [--batch 1] [--out bench_out/profile_step.json]

Runs the jitted forward (the verify of a T-node tree; T = 1 is an autoregressive step) a few times
under `jax.profiler` and reads the perfetto trace it writes: each XLA thunk (a fusion, a dot, a copy,
the layer loop) is one event. Events are summed per operation and per class (weight matmuls, the
scan's slicing of stacked weights and cache, attention, elementwise/norm/rope fusions, other), per
step. The CPU runtime may run independent thunks on several threads at once, so the per-class sums
can exceed the step's wall time; the busiest thread's total is printed beside it.
"""
import argparse
import collections
import glob
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import machine  # noqa: E402

import specjax  # noqa: E402
from specjax.cache import KVCache  # noqa: E402

CLASSES = (("matmul", r"^(dot|.*dot_fusion|ynn_fusion)"),
           ("slice/copy", r"(dynamic-slice|dynamic-update-slice|copy|concatenate|transpose)"),
           ("attention", r"(exponential|reduce-window|wrapped_reduce|softmax|select)"),
           ("elementwise", r"(fusion|add|multiply|subtract|divide|rsqrt|convert|bitcast)"))
CONTAINERS = ("ThunkExecutor", "while", "PjitFunction", "CommonPjRt", "ParseArguments", "$")


def classify(name: str) -> str:
  for cls, pat in CLASSES:
    if re.search(pat, name):
      return cls
  return "other"


def profile(fwd, args, reps: int) -> dict:
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    s = time.perf_counter()
    for _ in range(reps):
      jax.block_until_ready(fwd(*args))
    wall = (time.perf_counter() - s) / reps
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_op, per_class, per_thread = collections.Counter(), collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e["name"].startswith(CONTAINERS) or e["name"].startswith("end:"):
      continue
    ms = e.get("dur", 0) / 1000 / reps
    per_op[e["name"]] += ms
    per_class[classify(e["name"])] += ms
    per_thread[e.get("tid")] += ms
  return dict(wall_ms=1000 * wall, busiest_thread_ms=max(per_thread.values(), default=0.0),
              classes={k: round(v, 2) for k, v in per_class.most_common()},
              top_ops={k: round(v, 2) for k, v in per_op.most_common(15)})


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="default")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--context", type=int, default=256)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--sizes", default="1,8")
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--out", default="bench_out/profile_step.json")
  a = ap.parse_args()
  t = specjax.load(a.model, dtype=a.dtype)
  cfg, B, C = t.cfg, a.batch, a.context
  gd, params = nnx.split(t.model)

  @jax.jit
  def fwd(params, tokens, positions, cache, mask):
    return nnx.merge(gd, params)(tokens, positions, cache, mask).logits

  cache = KVCache.zeros(layers=cfg.layers, batch=B, max_len=C + 128, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                        dtype=t.model.dtype).advance(jnp.full((B,), C))
  rows = []
  for T in map(int, a.sizes.split(",")):
    args = (params, jnp.zeros((B, T), jnp.int32), jnp.broadcast_to(C + jnp.arange(T), (B, T)), cache,
            jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T)))
    for _ in range(3):
      jax.block_until_ready(fwd(*args))                      # compile and warm
    r = dict(T=T, batch=B, context=C, **profile(fwd, args, a.reps))
    rows.append(r)
    print(f"T={T}: wall {r['wall_ms']:.1f} ms, busiest thread {r['busiest_thread_ms']:.1f} ms; by class (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in r["classes"].items()), flush=True)
    for k, v in r["top_ops"].items():
      print(f"    {v:7.2f} ms  {k}")
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(machine=machine(), command=" ".join(sys.argv), dtype=a.dtype, rows=rows), indent=1))
  print("wrote", out)


if __name__ == "__main__":
  main()
