"""Medusa on the CPU: what a draft costs beside a verify, per draft vocabulary and per tree budget.

  python benchmarks/medusa_cost.py [--checkpoints DIR] [--out benchmarks/results/medusa_cost.json]

1. Draft cost: one propose (heads + LM head over the draft vocabulary + top-k) at batch 1, for each
   checkpoint found as DIR/v{4096,8192,16384,0}/medusa.safetensors (0 = full vocabulary; made by
   `specjax train --draft-vocab N`), with the held-out tau each recorded, and the step share.
2. Tree budget: for the shipped checkpoint and nodes in 4..32, greedy generation on one Spec-Bench
   dev prompt per category group (128 new tokens), against the autoregressive baseline in the same
   run: tau, tokens/s, speedup.
"""
import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from common import best_ms, machine, verify_ms  # noqa: E402

import specjax  # noqa: E402
from specjax.bench.run import read_prompts, select  # noqa: E402
from specjax.drafters import registry  # noqa: E402
from specjax.io import checkpoint  # noqa: E402


def draft_cost(t, path):
  d = registry.make(f"medusa:{path}")
  gd, params = nnx.split(t.model)

  # As in decoding: the reduced head's columns are gathered once (Medusa.init), not per step.
  w = t.model.head_weight(d.params["vocab"][...]) if d.draft_vocab else None

  def propose(tp, dp, w, h):
    model = nnx.merge(gd, tp)
    heads = nnx.merge(d.graphdef, dp)
    logits = model.head(heads(model.norm(h)), w)
    return jax.lax.top_k(logits, 4)[1]

  h = jnp.ones((1, t.cfg.hidden), jnp.float32)
  return d, best_ms(jax.jit(propose), params, d.params, w, h)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoints", default="/tmp/vt")
  ap.add_argument("--prompts", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/specbench/dev.jsonl"))
  ap.add_argument("--nodes", default="4,8,12,16,24,32")
  ap.add_argument("--max-new-tokens", type=int, default=128)
  ap.add_argument("--out", default="benchmarks/results/medusa_cost.json")
  ap.add_argument("--skip-nodes", action="store_true", help="only the draft-vocabulary part")
  a = ap.parse_args()
  t = specjax.load("default")
  report = {"machine": machine(), "command": " ".join(sys.argv), "vocab": [], "nodes": []}
  base_ms = verify_ms(t, 1)
  for v in (4096, 8192, 16384, 0):
    p = pathlib.Path(a.checkpoints) / f"v{v}" / "medusa.safetensors"
    if not p.exists():
      continue
    d, ms = draft_cost(t, p)
    ev = checkpoint.load(p)[1]["training"]["eval"]
    T = d.num_nodes
    row = {"draft_vocab": v or t.cfg.vocab, "propose_ms": ms, "verify_ms_T": verify_ms(t, T), "T": T,
           "ar_step_ms": base_ms, "tau_heldout": ev["tau_by_nodes"].get(str(d.nodes), ev["tau"]), "top1": ev["top1"],
           "coverage": ev["vocab_coverage"]}
    row["draft_share"] = ms / (ms + row["verify_ms_T"])
    row["est_speedup"] = row["tau_heldout"] * base_ms / (ms + row["verify_ms_T"])
    report["vocab"].append(row)
    print(json.dumps(row), flush=True)

  prompts = [] if a.skip_nodes else select(read_prompts(a.prompts), per_category=1)
  texts = [p.text for p in prompts]
  runs = {}
  configs = [] if a.skip_nodes else [("none", {})] + [(f"medusa-{n}", {"nodes": int(n)}) for n in a.nodes.split(",")]
  for name, opts in configs:
    drafter = "medusa" if opts else "none"
    specjax.generate(t, texts[:1], max_new_tokens=a.max_new_tokens, drafter=drafter, **opts)   # compile
    walls, new, fw = 0.0, 0, 0
    outs = []
    for text in texts:
      g = specjax.generate(t, [text], max_new_tokens=a.max_new_tokens, drafter=drafter, **opts)
      walls += g.wall_s
      new += sum(g.new_tokens)
      fw += sum(g.target_forwards)
      outs.append(g.token_ids[0])
    runs[name] = dict(tokens_per_s=new / walls, tau=new / fw, outs=outs)
  for name, r in runs.items():
    row = {"method": name, "tokens_per_s": r["tokens_per_s"], "tau": r["tau"],
           "speedup": r["tokens_per_s"] / runs["none"]["tokens_per_s"], "identical": r["outs"] == runs["none"]["outs"],
           "T": 1 if name == "none" else registry.make("medusa", nodes=int(name.split("-")[1])).num_nodes}
    row["verify_ms_T"] = verify_ms(t, row["T"])
    report["nodes"].append(row)
    print(json.dumps(row), flush=True)
  report["prompts"] = [str(p.id) for p in prompts]
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
