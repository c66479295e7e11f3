"""A trained drafter's cost per decode step, at each tree budget its checkpoint measured, beside the verify.

    python benchmarks/drafter_cost.py [--drafters eagle3,eagle,clover2,medusa] [--budgets 3/4/4,6/4]
                                      [--out bench_out/drafter_cost.json]

For each drafter (its shipped checkpoint, or NAME:PATH; weights do not change the cost, only the shapes do) and
each budget with a held-out tau recorded at training (`Drafter.budgets()`; --budgets keeps only those labels):
the drafter's work per decode step at batch 1 (propose: the tree; update: its state over the accepted entries),
the target's verify of a tree of that size at context 256, the autoregressive step, the draft's share of a
step and the estimate tau x AR / (draft + verify). Medians of 10-20 calls.

--untrained '{"NAME": {options}, ...}' measures drafters without a checkpoint instead: `untrained` weights
(random; the cost depends only on the shapes, except where a drafter's work depends on its inputs, e.g.
AdaDecode's threshold: pass threshold 0 for its longest draft, 1 for its shortest), one row each, no tau.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import cost_row, parser, save, verify_ms  # noqa: E402


def main():
  ap = parser(__doc__, "bench_out/drafter_cost.json")
  ap.add_argument("--drafters", default="eagle3,eagle,clover2,medusa")
  ap.add_argument("--budgets", default="", help="only these budget labels (default: every measured budget)")
  ap.add_argument("--untrained", default="", help="JSON {drafter: options}: random weights, one row each")
  a = ap.parse_args()
  import specjax
  from specjax.drafters import registry
  keep = set(filter(None, a.budgets.split(",")))
  t = specjax.load(a.model, dtype=a.dtype)
  ar, verify, rows = verify_ms(t, 1), {}, []
  for name, opts in (json.loads(a.untrained) if a.untrained else {}).items():
    d = registry.drafter_class(name.split("#")[0]).untrained(t, **opts)      # "NAME#tag": NAME measured twice
    rows.append(cost_row(t, d, name, json.dumps(opts, sort_keys=True), None, ar, verify))
    print(json.dumps(rows[-1]), flush=True)
  for name in (a.drafters.split(",") if not a.untrained else []):
    for opts, tau in registry.make(name).budgets():
      label = "/".join(str(v) for v in opts.values())
      if keep and label not in keep:
        continue
      rows.append(cost_row(t, registry.make(name, **opts), name.split(":")[0], label, tau, ar, verify))
      print(json.dumps(rows[-1]), flush=True)
  save(a.out, dict(dtype=a.dtype, ar_step_ms=ar, rows=rows))


if __name__ == "__main__":
  main()
