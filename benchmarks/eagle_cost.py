"""EAGLE on the CPU: what one draft step costs beside a verify, per tree budget (depth/top_k/nodes).

  python benchmarks/eagle_cost.py [--drafter eagle] [--budgets 3/4/4,4/4/8,5/4/10,5/6/16]
                                  [--out benchmarks/results/eagle_cost.json]

For each budget: the drafter's work per decode step at batch 1 (propose: the EAGLE-2 tree, one draft
layer call per depth; update: the draft layer over the accepted entries), the target's verify of a
tree of that size at context 256, the autoregressive step, and, with the held-out tau the checkpoint
recorded for that budget (when there is a checkpoint), the estimated speedup tau x AR / (draft +
verify). Without a checkpoint an untrained draft of the same shapes is timed (weights do not change
the cost). Timings are medians of 20 runs.
"""
import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from common import cost_row, machine, verify_ms  # noqa: E402

import specjax  # noqa: E402
from specjax.drafters import registry  # noqa: E402
from specjax.drafters.eagle import Eagle, Eagle3  # noqa: E402
from specjax.io import checkpoint  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--drafter", default="eagle", choices=["eagle", "eagle3"])
  ap.add_argument("--budgets", default="3/4/4,4/4/8,5/4/10,5/6/16")
  ap.add_argument("--draft-vocab", type=int, default=4096, help="for an untrained draft (no checkpoint)")
  ap.add_argument("--out", default="benchmarks/results/eagle_cost.json")
  a = ap.parse_args()
  t = specjax.load("default")
  path = registry.checkpoint_path(a.drafter)
  ev = checkpoint.load(path)[1]["training"]["eval"] if path.exists() else {}
  report = {"machine": machine(), "command": " ".join(sys.argv), "checkpoint": path.exists(), "rows": []}
  ar = verify_ms(t, 1)
  report["ar_step_ms"] = ar
  verify = {}
  for b in a.budgets.split(","):
    depth, top_k, nodes = map(int, b.split("/"))
    opts = dict(depth=depth, top_k=top_k, nodes=nodes)
    if path.exists():
      d = registry.make(a.drafter, **opts)
    else:
      d = (Eagle3 if a.drafter == "eagle3" else Eagle).untrained(t, draft_vocab=a.draft_vocab, **opts)
    row = cost_row(t, d, a.drafter, b, ev.get("tau_by_nodes", {}).get(b), ar, verify)
    report["rows"].append(row)
    print(json.dumps(row), flush=True)
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
