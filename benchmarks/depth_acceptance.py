"""Per-depth acceptance from a `specjax bench` output directory.

    python benchmarks/depth_acceptance.py bench_out/DIR [--out benchmarks/results/NAME.json]

From each record's accepted_hist (steps that accepted 0..D candidates), per method: the share of
steps reaching depth d, and the conditional rate P(accepted >= d | accepted >= d-1), for d = 1..D.
"""
import argparse
import json
import pathlib

import numpy as np


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("dir")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  hists = {}
  for line in open(pathlib.Path(a.dir) / "records.jsonl"):
    r = json.loads(line)
    h = r.get("accepted_hist")
    if h is None or r["method"] == "none":
      continue
    acc = hists.setdefault(r["method"], np.zeros(len(h), np.int64))
    if len(acc) < len(h):
      acc = np.pad(acc, (0, len(h) - len(acc)))
    acc[:len(h)] += np.asarray(h)
    hists[r["method"]] = acc
  report = {}
  for m, h in hists.items():
    reach = h[::-1].cumsum()[::-1] / h.sum()                          # P(accepted >= d), d = 0..D
    report[m] = {"steps": int(h.sum()), "reach": [round(float(x), 4) for x in reach[1:]],
                 "conditional": [round(float(reach[d] / reach[d - 1]), 4) if reach[d - 1] > 0 else None
                                 for d in range(1, len(reach))]}
    print(m, json.dumps(report[m]))
  if a.out:
    pathlib.Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
