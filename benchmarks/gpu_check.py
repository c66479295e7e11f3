"""The prepared GPU check (issue 20): is every drafter's greedy output identical to autoregressive decoding
on an accelerator, at what speed, and what does exact float32 cost against the backend's default?

    python benchmarks/gpu_check.py MODEL.gguf OUT_DIR [--budget-s 450] [--tokens 256] [--smoke]

Groups of (dtype, precision, batch) run as separate processes side by side, so their compilations (15-90 s a
program on an H200) overlap; every timed run holds one lock file, so no two timed runs share the GPU. Each
group decodes the 8 Spec-Bench dev prompts of benchmarks/gpu_prompts.jsonl (Apache-2.0, hemingkx/Spec-Bench)
with `none` first, then each drafter configuration in priority order, until the time budget runs out.
Per configuration: tokens/s of the second (compiled) call, tau, how many outputs equal that group's `none`
outputs, and for each one that differs the first differing token and the target's top-2 logit gap there.
Rows go to OUT_DIR/rows.jsonl as they finish; OUT_DIR/summary.md is the table.
"""
import argparse
import fcntl
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
GPU_TREES = {"medusa": dict(nodes=32), "clover2": dict(nodes=24), "eagle3": dict(depth=6, top_k=8, nodes=32),
             "pld": dict(num_tokens=8, branches=4)}
ALL = [("pld", {}), ("eagle3", {}), ("medusa", {}), ("clover2", {}), ("eagle", {}), ("lookahead", {}),
       ("self-spec", {}), ("staged", {}), ("early-exit", {}), *[(k, v) for k, v in GPU_TREES.items()]]
SOME = [("pld", {}), ("eagle3", {}), ("medusa", {}), ("clover2", {}), ("eagle3", GPU_TREES["eagle3"])]
# (dtype, precision, batch, configurations); `none` runs first in each group.
GROUPS = [("float32", "exact", 1, ALL),
          ("float32", "exact", 8, ALL[:5]), ("float32", "exact", 8, ALL[5:9]),
          ("bfloat16", "exact", 1, ALL), ("bfloat16", "exact", 8, SOME[:4]),
          ("bfloat16", "fast", 1, SOME), ("float32", "fast", 1, SOME[:3]), ("bfloat16", "fast", 8, SOME[:3])]


def worker(model, out, group: int, tokens: int, deadline: float, smoke: bool):
  sys.path.insert(0, str(HERE.parent))
  import specjax
  from specjax import api
  dtype, precision, batch, configs = GROUPS[group]
  rows = [json.loads(line) for line in open(HERE / "gpu_prompts.jsonl")][:2 if smoke else 8]
  t = specjax.load(model, dtype=dtype, precision=precision)
  ids = api.encode_prompts(t, [r["prompt"] for r in rows], True)
  chunks = [ids[i:i + batch] for i in range(0, len(ids), batch)]
  lock = open(pathlib.Path(out) / "timing.lock", "w")

  def decode(drafter, opts):
    outs, wall, new, fw, compile_s = [], 0.0, 0, 0, 0.0
    for c in chunks:
      first = api.generate(t, c, max_new_tokens=tokens, drafter=drafter, **opts)        # compiles
      fcntl.flock(lock, fcntl.LOCK_EX)            # one timed run on the GPU at a time
      try:
        g = api.generate(t, c, max_new_tokens=tokens, drafter=drafter, **opts)
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
      assert g.token_ids == first.token_ids, "two calls of one program differ"
      outs += g.token_ids
      wall, new, fw = wall + g.wall_s, new + sum(g.new_tokens), fw + sum(g.target_forwards)
      compile_s += first.compile_s
    return outs, dict(tokens_per_s=new / wall, tau=new / fw, compile_s=round(compile_s, 1), new_tokens=new)

  base = None
  for name, opts in [("none", {})] + list(configs):
    if time.time() > deadline:
      row = dict(dtype=dtype, precision=precision, batch=batch, drafter=name, opts=opts, skipped="time budget")
    else:
      try:
        outs, figures = decode(name, opts)
        base = base or (outs, figures)
        divs = [dict(prompt=rows[i]["id"], **d) for i, (p, b, o) in enumerate(zip(ids, base[0], outs))
                if (d := api.divergence(t, p, b, o)) is not None]
        row = dict(dtype=dtype, precision=precision, batch=batch, drafter=name, opts=opts, **figures,
                   speedup=figures["tokens_per_s"] / base[1]["tokens_per_s"], identical=len(outs) - len(divs),
                   total=len(outs), divergences=divs)
      except Exception as e:          # one configuration's failure is a row, not the end of the check
        row = dict(dtype=dtype, precision=precision, batch=batch, drafter=name, opts=opts,
                   error=f"{type(e).__name__}: {e}"[:500])
    with open(pathlib.Path(out) / "rows.jsonl", "a") as f:
      f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "divergences"}), flush=True)


def summarize(out: pathlib.Path, machine: str) -> str:
  rows = [json.loads(line) for line in open(out / "rows.jsonl")] if (out / "rows.jsonl").exists() else []
  lines = [f"# GPU check ({machine})", "",
           "| dtype | precision | batch | drafter | options | tokens/s | speedup | tau | identical | largest gap | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  key = lambda r: (r["dtype"], r["precision"], r["batch"], r["drafter"] != "none")
  for r in sorted(rows, key=key):
    opts = ",".join(f"{k}={v}" for k, v in r["opts"].items()) or "defaults"
    head = f"| {r['dtype']} | {r['precision']} | {r['batch']} | {r['drafter']} | {opts} |"
    if "skipped" in r or "error" in r:
      lines.append(head + f" {r.get('skipped') or r['error']} ||||||")
      continue
    gaps = [d["gap"] for d in r["divergences"]]
    lines.append(head + f" {r['tokens_per_s']:.0f} | {r['speedup']:.2f} | {r['tau']:.2f} | {r['identical']}/{r['total']} | "
                 f"{max(gaps):.3g} |" if gaps else head + f" {r['tokens_per_s']:.0f} | {r['speedup']:.2f} | "
                 f"{r['tau']:.2f} | {r['identical']}/{r['total']} | - |")
    lines[-1] += f" {r['compile_s']} |"
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("model")
  ap.add_argument("out")
  ap.add_argument("--budget-s", type=float, default=450.0, help="no new configuration starts after this")
  ap.add_argument("--tokens", type=int, default=256)
  ap.add_argument("--groups", default=None, help="comma-separated group indices (default: all)")
  ap.add_argument("--smoke", action="store_true", help="2 prompts (a CPU dry run of the script)")
  ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  out = pathlib.Path(a.out)
  if a.worker is not None:
    return worker(a.model, out, a.worker, a.tokens, a.deadline, a.smoke)
  out.mkdir(parents=True, exist_ok=True)
  sys.path.insert(0, str(HERE))
  from common import machine
  deadline = time.time() + a.budget_s
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", SPECJAX_COMPILATION_CACHE="0", PYTHONUNBUFFERED="1")
  groups = range(len(GROUPS)) if a.groups is None else [int(g) for g in a.groups.split(",")]
  procs = [subprocess.Popen([sys.executable, __file__, a.model, str(out), "--worker", str(g), "--tokens", str(a.tokens),
                             "--deadline", str(deadline)] + (["--smoke"] if a.smoke else []), env=env)
           for g in groups]
  for p in procs:
    p.wait()
  m = machine()
  text = summarize(out, f"{m['devices'][0]}; host CPU {m['cpu']}; JAX {m['jax']}")
  (out / "summary.md").write_text(text)
  (out / "machine.json").write_text(json.dumps(m, indent=1))
  print(text)


if __name__ == "__main__":
  main()
