"""GPU spot check of the trained drafters on the real model (what produced gpu_spec_h200.json).

    python benchmarks/gpu_spec_check.py MODEL.gguf RUNS_DIR OUT.json

RUNS_DIR holds eagle3/, eagle/ and clover2/ from benchmarks/gpu_train.sh. 4 prompts at batch 4, 128
new tokens, float32; each setting runs twice and the second (compiled) call is reported, with tau and
whether the tokens equal plain decoding's.
"""
import json
import sys

import specjax

PROMPTS = ["Write a Python function that checks whether a number is prime, then explain it.",
           "What are three benefits of regular exercise? Explain each in two sentences.",
           "Summarize: The quick brown fox jumps over the lazy dog. The dog sleeps. The fox runs away and hides in "
           "the forest until night falls.",
           "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
           "clips did Natalia sell altogether in April and May?"]


def main(model, runs, out):
  t = specjax.load(model)
  rows, base = [], None
  for d in ["none", "pld", f"eagle3:{runs}/eagle3/eagle3.safetensors", f"eagle:{runs}/eagle/eagle.safetensors",
            f"clover2:{runs}/clover2/clover2.safetensors"]:
    bigger = dict(depth=6, top_k=8, nodes=32) if "eagle" in d else dict(nodes=24, width=8)
    for opts in ({},) if d in ("none", "pld") else ({}, bigger):
      specjax.generate(t, PROMPTS, max_new_tokens=128, drafter=d, **opts)          # compile
      g = specjax.generate(t, PROMPTS, max_new_tokens=128, drafter=d, **opts)
      base = base or g
      r = dict(drafter=d.split(":")[0], opts=opts, tokens_per_s=round(g.tokens_per_s, 1),
               tau=round(sum(g.new_tokens) / sum(g.target_forwards), 3), identical=g.token_ids == base.token_ids)
      print(json.dumps(r), flush=True)
      rows.append(r)
  json.dump(rows, open(out, "w"))


if __name__ == "__main__":
  main(*sys.argv[1:4])
