"""Clover / Clover-2 on the CPU: what one draft step costs beside a verify, per tree budget.

  python benchmarks/clover_cost.py [--drafters clover,clover2] [--out benchmarks/results/clover_cost.json]

For each drafter (the shipped checkpoint; weights do not change the cost, only the shapes do) and
budget (nodes/width): the drafter's work per decode step at batch 1 (propose: the tree grown level by
level; update: the augmenting block over the accepted entries), the target's verify of a tree of that
size at context 256, the autoregressive step, and, with the held-out tau recorded at training for
that budget, the estimated speedup tau x AR / (draft + verify). Timings are medians of 20 runs.
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
from specjax.io import checkpoint  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--drafters", default="clover,clover2")
  ap.add_argument("--budgets", default="4/4,6/4,8/4,12/6,16/8")
  ap.add_argument("--out", default="benchmarks/results/clover_cost.json")
  a = ap.parse_args()
  t = specjax.load("default")
  report = {"machine": machine(), "command": " ".join(sys.argv), "rows": []}
  ar = verify_ms(t, 1)
  report["ar_step_ms"] = ar
  verify = {}
  for name in a.drafters.split(","):
    ev = checkpoint.load(registry.checkpoint_path(name))[1]["training"]["eval"]
    for b in a.budgets.split(","):
      n, w = map(int, b.split("/"))
      d = registry.make(name, nodes=n, width=w)
      row = cost_row(t, d, name, b, ev["tau_by_nodes"].get(b), ar, verify)
      report["rows"].append(row)
      print(json.dumps(row), flush=True)
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
