"""Tokens/s against batch size for plain decoding, a fixed tree budget and tree_budget="auto", in one run.

    python benchmarks/batch_sweep.py --drafters medusa,pld --batches 1,4,16,32 --max-new-tokens 64 \
        --repeats 3 --out benchmarks/results/batch_sweep.json

Batch B answers the first B prompts of the file (first turn, chat template, greedy). Per batch size every
program is compiled and auto's step costs measured first (from an empty cost cache, so the run measures
its own curve; its measurement time is reported, not counted in tokens/s), then the methods run in
interleaved rounds and the median round is reported.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import machine  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--prompts", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/specbench/dev.jsonl"))
  ap.add_argument("--model", default="default")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--drafters", default="medusa,pld")
  ap.add_argument("--batches", default="1,4,16,32")
  ap.add_argument("--max-new-tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default="bench_out/batch_sweep.json")
  a = ap.parse_args()
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  os.environ.setdefault("SPECJAX_COST_CACHE", str(out.with_suffix(".costs.json")))
  pathlib.Path(os.environ["SPECJAX_COST_CACHE"]).unlink(missing_ok=True)

  import specjax
  from specjax.io.prompts import read_prompts
  t = specjax.load(a.model, dtype=a.dtype)
  batches = [int(b) for b in a.batches.split(",")]
  prompts = [p.text for p in read_prompts(a.prompts)][:max(batches)]
  drafters = [d for d in a.drafters.split(",") if d]
  methods = [("none", "none", None)] + [(f"{d} {b}", d, b) for d in drafters for b in ("fixed", "auto")]
  rows = []
  load = [os.getloadavg()]
  for B in batches:
    ids = specjax.api.encode_prompts(t, prompts[:B], True)
    gen = lambda d, b: specjax.generate(t, ids, max_new_tokens=a.max_new_tokens, drafter=d, tree_budget=b)
    setup = {}
    for name, d, b in methods:           # compile, and let auto measure its step costs
      s = time.perf_counter()
      g = gen(d, b)
      setup[name] = dict(seconds=time.perf_counter() - s, budget=g.budget, budget_ms=g.budget_ms)
    runs = {name: [] for name, _, _ in methods}
    for _ in range(a.repeats):
      for name, d, b in methods:
        runs[name].append(gen(d, b))
    base = runs["none"][0].token_ids
    for name, d, b in methods:
      gs = runs[name]
      tps = [g.tokens_per_s for g in gs]
      g = gs[0]
      row = dict(batch=B, method=name, drafter=d, tree_budget=b, budget=g.budget, tokens_per_s=statistics.median(tps),
                 tokens_per_s_all=tps, tau=sum(g.new_tokens) / max(sum(g.target_forwards), 1),
                 identical=sum(x == y for x, y in zip(g.token_ids, base)), rows=B, setup_s=setup[name]["seconds"],
                 budget_ms=setup[name]["budget_ms"])
      rows.append(row)
      print(f"B={B:3d} {name:14s} {row['tokens_per_s']:7.1f} tok/s  tau {row['tau']:.2f}  budget {g.budget:14s} "
            f"identical {row['identical']}/{B}  setup {row['setup_s']:.0f} s", flush=True)
    load.append(os.getloadavg())
    out.write_text(json.dumps(dict(machine=machine(), command=" ".join(["python"] + sys.argv), loadavg=load,
                                   max_new_tokens=a.max_new_tokens, repeats=a.repeats, dtype=a.dtype, rows=rows),
                              indent=1))


if __name__ == "__main__":
  main()
