"""Whether a drafter's FIRST step accepts a drafted token, on the Spec-Bench prompts of a bench run.

With max_new_tokens=2 a row takes one target forward where its first step accepted at least one drafted token and
two where it accepted none. The first step's drafter state is the prompt's second-to-last token (the prefill stops
short of the root), which is why this is worth measuring on its own (BENCHMARKS.md, issue 24).

  python benchmarks/first_step.py BENCH_OUT_DIR [--drafters medusa,clover2,eagle,eagle3]
"""
import argparse
import json
import pathlib

import specjax

ap = argparse.ArgumentParser()
ap.add_argument("bench", help="a `specjax bench --out` directory: its records name the prompts")
ap.add_argument("--prompts", default="../shared/data/specbench/dev.jsonl")
ap.add_argument("--drafters", default="medusa,clover2,eagle,eagle3")
a = ap.parse_args()
ids = [r["id"] for r in map(json.loads, open(pathlib.Path(a.bench) / "records.jsonl")) if r["method"] == "none"]
turns = {q["question_id"]: q["turns"][0] for q in map(json.loads, open(a.prompts))}
target = specjax.load()
for d in a.drafters.split(","):
  g = specjax.generate(target, [turns[i] for i in ids], max_new_tokens=2, drafter=d)
  hit = sum(f == 1 and n == 2 for f, n in zip(g.target_forwards, g.new_tokens))
  print(f"{d}: first step accepted >= 1 drafted token on {hit}/{len(ids)} prompts", flush=True)
