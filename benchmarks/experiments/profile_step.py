"""Where a target step goes on the CPU: XLA's own per-operation trace of one forward over T tokens.

    python benchmarks/experiments/profile_step.py [--sizes 1,8] [--context 256] [--batch 1] [--out bench_out/profile_step.json]

Runs the jitted forward (the verify of a T-node tree; T = 1 is an autoregressive step) a few times
under `jax.profiler` and reads the perfetto trace it writes: each XLA thunk (a fusion, a dot, a copy,
the layer loop) is one event. Events are summed per operation and per class (weight matmuls, the
scan's slicing of stacked weights and cache, attention, elementwise/norm/rope fusions, other), per
step. The CPU runtime may run independent thunks on several threads at once, so the per-class sums
can exceed the step's wall time; the busiest thread's total is printed beside it.
"""
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import forward_args, forward_fn, parser, save  # noqa: E402

import specjax  # noqa: E402

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
  ap = parser(__doc__, "bench_out/profile_step.json")
  ap.add_argument("--context", type=int, default=256)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--sizes", default="1,8")
  ap.add_argument("--reps", type=int, default=10)
  a = ap.parse_args()
  t = specjax.load(a.model, dtype=a.dtype)
  B, C = a.batch, a.context
  fwd, params = forward_fn(t)
  rows = []
  for T in map(int, a.sizes.split(",")):
    args = (params, *forward_args(t, B=B, T=T, context=C, buffer=C + 128))
    for _ in range(3):
      jax.block_until_ready(fwd(*args))                      # compile and warm
    r = dict(T=T, batch=B, context=C, **profile(fwd, args, a.reps))
    rows.append(r)
    print(f"T={T}: wall {r['wall_ms']:.1f} ms, busiest thread {r['busiest_thread_ms']:.1f} ms; by class (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in r["classes"].items()), flush=True)
    for k, v in r["top_ops"].items():
      print(f"    {v:7.2f} ms  {k}")
  save(a.out, dict(dtype=a.dtype, rows=rows))


if __name__ == "__main__":
  main()
