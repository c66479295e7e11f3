"""For a dtype_check.py result: at each prompt where a drafter's greedy output leaves the autoregressive one,
the autoregressive model's top-2 logit gap at the first differing token (a near-tie the rounding of a
multi-token forward can flip, or a real mismatch), in the dtype of the run.

    PYTHONPATH=. python benchmarks/divergence_gaps.py bench_out/dtype_check.json [--dtype bfloat16]
"""
import argparse
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

import specjax
from specjax.io import prompts as prompts_io


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("result")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--prompts", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/specbench/dev.jsonl"))
  a = ap.parse_args()
  d = json.loads(pathlib.Path(a.result).read_text())
  res = d["results"][a.dtype]
  by_id = {str(p.id): p for p in prompts_io.read_prompts(a.prompts)}
  t = specjax.load("default", dtype=a.dtype)
  from specjax import api
  gaps = {}
  for m, r in res.items():
    for pid, got, ref in zip(d["prompts"], r["token_ids"], res["none"]["token_ids"]):
      if got == ref:
        continue
      i = next((k for k, (x, y) in enumerate(zip(got, ref)) if x != y), min(len(got), len(ref)))
      ids = api.encode_prompts(t, [by_id[str(pid)].text], True, False)[0] + ref[:i]
      logits = t.model(jnp.asarray([ids]), jnp.arange(len(ids))[None], None,
                       jnp.tril(jnp.ones((len(ids), len(ids)), bool))[None]).logits[0, -1]
      top = np.sort(np.asarray(logits, np.float32))[-2:]
      gaps.setdefault(m, []).append(dict(prompt=pid, position=i, gap=float(top[1] - top[0])))
      print(f"{m:8s} prompt {pid}: first difference at token {i}, top-2 gap {top[1] - top[0]:.4f}", flush=True)
  out = pathlib.Path(a.result).with_suffix(".gaps.json")
  out.write_text(json.dumps(dict(command=" ".join(sys.argv), dtype=a.dtype, gaps=gaps), indent=1))
  print("wrote", out)


if __name__ == "__main__":
  main()
