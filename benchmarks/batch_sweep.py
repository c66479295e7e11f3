"""Tokens/s against batch size for plain decoding, a fixed tree budget and tree_budget="auto", in one run.

    python benchmarks/batch_sweep.py --drafters medusa,pld --batches 1,4,16,32 --max-new-tokens 64 \
        --repeats 3 --out benchmarks/results/batch_sweep.json

At batch B the first max(B, --min-prompts) prompts of the file, taken one category at a time in turn
(first turn, chat template, greedy), are answered in calls of B, so small batches are not judged on one
prompt and no batch holds one kind of task only. Per batch size every program is
compiled and auto's step costs measured first, on one call (from an empty cost cache, so the run
measures its own curve; that time is reported, not counted in tokens/s), then the methods run in
interleaved rounds and the median round's tokens/s (all new tokens / summed call wall time) is reported.
"""
import itertools
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import parser, save  # noqa: E402


def main():
  ap = parser(__doc__, "bench_out/batch_sweep.json")
  ap.add_argument("--prompts", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/specbench/dev.jsonl"))
  ap.add_argument("--drafters", default="medusa,pld")
  ap.add_argument("--batches", default="1,4,16,32")
  ap.add_argument("--max-new-tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--min-prompts", type=int, default=8)
  a = ap.parse_args()
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  os.environ.setdefault("SPECJAX_COST_CACHE", str(out.with_suffix(".costs.json")))
  pathlib.Path(os.environ["SPECJAX_COST_CACHE"]).unlink(missing_ok=True)

  import specjax
  from specjax import api
  from specjax.io.prompts import read_prompts
  t = specjax.load(a.model, dtype=a.dtype)
  batches = [int(b) for b in a.batches.split(",")]
  by_category = {}
  for p in read_prompts(a.prompts):
    by_category.setdefault(p.category, []).append(p.text)
  prompts = [q for round_ in itertools.zip_longest(*by_category.values()) for q in round_ if q is not None]
  prompts = prompts[:max(batches + [a.min_prompts])]
  drafters = [d for d in a.drafters.split(",") if d]
  methods = [("none", "none", None)] + [(f"{d} {b}", d, b) for d in drafters for b in ("fixed", "auto")]
  rows = []
  load = [os.getloadavg()]
  for B in batches:
    ids = api.encode_prompts(t, prompts[:max(B, a.min_prompts)], True)
    calls = [ids[i:i + B] for i in range(0, len(ids), B)]
    one = lambda c, d, b: specjax.generate(t, c, max_new_tokens=a.max_new_tokens, drafter=d, tree_budget=b)
    setup = {}
    for name, d, b in methods:           # compile, and let auto measure its step costs
      s = time.perf_counter()
      g = one(calls[0], d, b)
      setup[name] = dict(seconds=time.perf_counter() - s, budget=g.budget, budget_ms=g.budget_ms)
    runs = {name: [] for name, _, _ in methods}
    for _ in range(a.repeats):
      for name, d, b in methods:
        runs[name].append([one(c, d, b) for c in calls])
    base = [x for g in runs["none"][0] for x in g.token_ids]
    for name, d, b in methods:
      tps = [sum(sum(g.new_tokens) for g in r) / sum(g.wall_s for g in r) for r in runs[name]]
      gs = runs[name][0]
      new, fw = sum(sum(g.new_tokens) for g in gs), sum(sum(g.target_forwards) for g in gs)
      row = dict(batch=B, prompts=len(ids), method=name, drafter=d, tree_budget=b, budget=sorted({g.budget for g in gs}),
                 tokens_per_s=statistics.median(tps), tokens_per_s_all=tps, tau=new / max(fw, 1),
                 identical=sum(x == y for x, y in zip([x for g in gs for x in g.token_ids], base)),
                 setup_s=setup[name]["seconds"], budget_ms=setup[name]["budget_ms"])
      rows.append(row)
      print(f"B={B:3d} {name:14s} {row['tokens_per_s']:7.1f} tok/s  tau {row['tau']:.2f}  budget {','.join(row['budget']):14s} "
            f"identical {row['identical']}/{len(ids)}  setup {row['setup_s']:.0f} s  {row['budget_ms']}", flush=True)
    load.append(os.getloadavg())
    save(out, dict(loadavg_per_batch=load, max_new_tokens=a.max_new_tokens, repeats=a.repeats, dtype=a.dtype,
                   rows=rows))     # after every batch size: a run stopped by a time limit keeps what it measured


if __name__ == "__main__":
  main()
