"""Self-speculation with and without the early-exit adapter on the default model: per exit layer K the
draft's measured cost against its held-out acceptance, and the speedup they allow.

    python benchmarks/early_exit_cost.py benchmarks/results/early_exit_agreement.json \
        --out benchmarks/results/early_exit_cost.json

Acceptance a: held-out top-1 from early_exit_agreement.py (plain exit head, and the adapter with its
4096-token draft vocabulary). Cost: propose ms at gamma 1 and 3 (batch 1, 256 committed tokens) of
SelfSpec(exit_layer=K) and of EarlyExit (random adapter of the same shape: weights do not change the
cost), per-token = their difference / 2; verify ms at T = gamma + 1; the plain step at T = 1. Chain
estimate, acceptances independent: tau = 1 + a + ... + a^gamma, speedup = tau x ar / (propose + verify).
"""
import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import draft_ms, machine, verify_ms  # noqa: E402

import specjax  # noqa: E402
from specjax.drafters.draft_model import SelfSpec  # noqa: E402
from specjax.drafters.early_exit import EarlyExit  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("agreement")
  ap.add_argument("--out", required=True)
  a = ap.parse_args()
  agree = json.loads(pathlib.Path(a.agreement).read_text())["rows"]
  t = specjax.load("default")
  ar = verify_ms(t, 1)
  verify = {g + 1: verify_ms(t, g + 1) for g in (1, 2, 3)}
  rows = []
  for r in agree:
    k = r["exit_layer"]
    for kind, acc, make in (("plain", r["plain_top1"], lambda g: SelfSpec(exit_layer=k, gamma=g)),
                            ("adapter", r["adapter_top1"],
                             lambda g: EarlyExit.untrained(t, exit_layer=k, gamma=g, draft_vocab=r["draft_vocab"]))):
      p1, p3 = draft_ms(t, make(1))[0], draft_ms(t, make(3))[0]
      per_token = (p3 - p1) / 2
      for g in (1, 2, 3):
        tau = sum(acc ** i for i in range(g + 1))
        rows.append(dict(exit_layer=k, head=kind, gamma=g, accept=acc, draft_ms_per_token=per_token, first_call_ms=p1,
                         draft_share_of_ar=per_token / ar, verify_ms=verify[g + 1], ar_ms=ar, est_tau=tau,
                         est_speedup=tau * ar / (p1 + (g - 1) * per_token + verify[g + 1])))
        print(json.dumps(rows[-1]), flush=True)
  pathlib.Path(a.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
