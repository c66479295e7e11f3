"""Tau of one drafter's tree rules on a few Spec-Bench dev prompts (issue 21, item 5).

  python benchmarks/tree_rules.py --drafter clover2 --variants 'nodes=6;nodes=24,tree=static' --per-group 2

Each variant is one generate call over the same prompts (the first `per-group` first turns of each of the six
category groups, chat template, greedy); the outputs are checked token for token against the autoregressive
baseline. Prints one JSON line per variant: tau overall and per prompt.
"""
import argparse
import json
import time

import specjax
from specjax.io import load

GROUPS = ("translation", "summarization", "qa", "math_reasoning", "rag")     # the rest form mt_bench


def prompts(path: str, per_group: int) -> list[str]:
  rows = [json.loads(line) for line in open(path)]
  out = []
  for g in ("mt_bench",) + GROUPS:
    mine = [r for r in rows if (r["category"] if r["category"] in GROUPS else "mt_bench") == g]
    out += [r["turns"][0] for r in mine[:per_group]]
  return out


def options(text: str) -> dict:
  out = {}
  for kv in filter(None, text.split(",")):
    k, v = kv.split("=")
    out[k] = v if not v.lstrip("-").replace(".", "").isdigit() else (float(v) if "." in v else int(v))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--drafter", default="clover2")
  ap.add_argument("--variants", default="", help="';'-separated option sets, e.g. 'nodes=6;nodes=24,tree=static'")
  ap.add_argument("--prompts", default="../shared/data/specbench/dev.jsonl")
  ap.add_argument("--per-group", type=int, default=2)
  ap.add_argument("--max-new-tokens", type=int, default=64)
  a = ap.parse_args()
  target = load("default")
  ps = prompts(a.prompts, a.per_group)
  base = specjax.generate(target, ps, max_new_tokens=a.max_new_tokens)
  for v in a.variants.split(";"):
    opts = options(v)
    t = time.perf_counter()
    g = specjax.generate(target, ps, max_new_tokens=a.max_new_tokens, drafter=a.drafter, **opts)
    print(json.dumps(dict(drafter=a.drafter, options=opts, tau=round(sum(g.new_tokens) / sum(g.target_forwards), 3),
                          per_prompt=[round(x, 2) for x in g.tau], identical=g.token_ids == base.token_ids,
                          prompts=len(ps), max_new_tokens=a.max_new_tokens, seconds=round(time.perf_counter() - t, 1))),
          flush=True)


if __name__ == "__main__":
  main()
