"""bfloat16 beside float32 on this CPU: speed and whether every drafter's greedy output equals the
autoregressive output of the same dtype, on a few Spec-Bench prompts.

    python benchmarks/dtype_check.py [--drafters pld,medusa,eagle3] [--per-category 1] [--max-new-tokens 128]
                                     [--out bench_out/dtype_check.json]

Each dtype loads the default model, compiles every program with one untimed call, then runs the
prompts one at a time (batch 1, greedy); tokens/s = all new tokens / summed wall time (prefill
included, compilation excluded).
"""
import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import machine  # noqa: E402

import specjax  # noqa: E402
from specjax.io import prompts as prompts_io  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--prompts", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/specbench/dev.jsonl"))
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--drafters", default="pld,medusa,eagle3")
  ap.add_argument("--per-category", type=int, default=1)
  ap.add_argument("--max-new-tokens", type=int, default=128)
  ap.add_argument("--out", default="bench_out/dtype_check.json")
  a = ap.parse_args()
  rows = prompts_io.read_prompts(a.prompts)
  seen, picked = {}, []
  for p in rows:
    if seen.get(p.group, 0) < a.per_category:
      seen[p.group] = seen.get(p.group, 0) + 1
      picked.append(p)
  methods = ["none"] + a.drafters.split(",")
  out = dict(machine=machine(), command=" ".join(sys.argv), prompts=[p.id for p in picked], results={})
  for dtype in a.dtypes.split(","):
    t = specjax.load("default", dtype=dtype)
    res = {}
    for m in methods:
      specjax.generate(t, [picked[0].text], max_new_tokens=a.max_new_tokens, drafter=m)     # compile
      toks, new, wall, fw = [], 0, 0.0, 0
      for p in picked:
        g = specjax.generate(t, [p.text], max_new_tokens=a.max_new_tokens, drafter=m)
        toks.append(g.token_ids[0])
        new += g.new_tokens[0]
        wall += g.wall_s
        fw += g.target_forwards[0]
      res[m] = dict(tokens_per_s=new / wall, tau=new / fw, token_ids=toks)
    base = res["none"]
    for m, r in res.items():
      r["identical"] = sum(x == y for x, y in zip(r["token_ids"], base["token_ids"]))
      r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
      print(f"{dtype:9s} {m:8s} {r['tokens_per_s']:6.1f} tok/s  {r['speedup']:.2f}x  tau {r['tau']:.2f}  "
            f"identical {r['identical']}/{len(picked)}", flush=True)
    out["results"][dtype] = res
  if len(out["results"]) > 1:
    f32, *others = out["results"].values()
    for (dt, r) in list(out["results"].items())[1:]:
      same = sum(x == y for x, y in zip(r["none"]["token_ids"], f32["none"]["token_ids"]))
      print(f"{dt} autoregressive output equal to float32's on {same}/{len(picked)} prompts")
  path = pathlib.Path(a.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print("wrote", path)


if __name__ == "__main__":
  main()
