"""ParallelSpec's draft cost per decode step beside EAGLE-3's at the same depth and tree size, random weights
(weights do not change the cost, only the shapes), default model, batch 1, draft vocabulary 4096 for both:

    PYTHONPATH=. python benchmarks/parallelspec_cost.py

Prints one JSON row per (drafter, depth): propose and update ms (benchmarks/common.draft_ms medians).
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import draft_ms  # noqa: E402


def main():
  import specjax
  from specjax.drafters.eagle import Eagle3
  from specjax.drafters.parallelspec import ParallelSpec
  t = specjax.load("default")
  cpu = next(line for line in open("/proc/cpuinfo") if line.startswith("model name")).split(":")[1].strip()
  for depth in (3, 4):
    for d in (Eagle3.untrained(t, depth=depth, top_k=4, nodes=4, draft_vocab=4096),
              ParallelSpec.untrained(t, depth=depth, nodes=4, draft_vocab=4096)):
      prop, upd = draft_ms(t, d)
      print(json.dumps(dict(cpu=cpu, drafter=d.name, depth=depth, T=d.num_nodes, propose_ms=round(prop, 2),
                            update_ms=round(upd, 2), total_ms=round(prop + upd, 2))), flush=True)


if __name__ == "__main__":
  main()
