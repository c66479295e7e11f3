"""Self-speculation on the default model: per exit layer K, the draft's cost per token against its
acceptance, and the speedup they allow.

    python benchmarks/self_spec_cost.py BENCH_OUT --out benchmarks/results/self_spec_cost.json

BENCH_OUT: a `specjax bench` output directory with "none" records (the target's own greedy answers):
a_K = how often the exit head's top-1 (first K layers, the shared final norm and LM head) equals the
target's token, over every answer position (one forward over prompt + answer, all layers captured).
Cost: propose ms of SelfSpec(exit_layer=K) at gamma 1 and 3 (batch 1, 256 committed tokens), so the
per-token draft cost is their difference / 2; verify ms at T = gamma + 1; the autoregressive step at
T = 1. Estimates for a chain: tau(gamma) = 1 + a + ... + a^gamma (acceptances independent), speedup =
tau x ar / (propose + verify). Prints and writes one JSON row per (K, gamma).
"""
import argparse
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import draft_ms, machine, verify_ms  # noqa: E402

import specjax  # noqa: E402
from specjax.drafters.draft_model import SelfSpec  # noqa: E402
from specjax.models.llama import causal_mask  # noqa: E402

EXITS = (4, 8, 12, 16, 20, 24, 27)


def agreement(t, bench_out: pathlib.Path) -> dict:
  """{K: a_K} over the "none" records' answers (prompts re-encoded as the bench did: chat template)."""
  from specjax.bench.run import RECORDS
  from specjax.io.prompts import read_prompts
  recs = [json.loads(x) for x in open(bench_out / RECORDS)]
  recs = {str(r["id"]): r for r in recs if r["method"] == "none"}
  prompts = [p for p in read_prompts("../shared/data/specbench/dev.jsonl") if str(p.id) in recs]
  hits = {k: 0 for k in EXITS}
  total = 0
  for p, ids in zip(prompts, specjax.api.encode_prompts(t, [p.text for p in prompts], True)):
    ans = recs[str(p.id)]["token_ids"]
    seq = ids + ans
    n = len(seq) - 1
    out = t.model(jnp.asarray([seq[:-1]]), jnp.arange(n)[None], None, causal_mask(1, n), capture=tuple(k - 1 for k in EXITS))
    want = np.asarray(seq[len(ids):])                               # the target's own next tokens
    for k in EXITS:
      got = np.asarray(jnp.argmax(t.model.logits(out.layer_hidden[k - 1][0, len(ids) - 1:]), -1))
      hits[k] += int((got == want).sum())
    total += len(want)
  return {k: hits[k] / total for k in EXITS}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("bench_out")
  ap.add_argument("--out", required=True)
  a = ap.parse_args()
  t = specjax.load("default")
  acc = agreement(t, pathlib.Path(a.bench_out))
  ar = verify_ms(t, 1)
  verify = {g + 1: verify_ms(t, g + 1) for g in (1, 2, 3)}
  rows = []
  for k in EXITS:
    p1 = draft_ms(t, SelfSpec(exit_layer=k, gamma=1))[0]
    p3 = draft_ms(t, SelfSpec(exit_layer=k, gamma=3))[0]
    per_token = (p3 - p1) / 2
    for g in (1, 2, 3):
      prop = p1 + (g - 1) * per_token
      tau = sum(acc[k] ** i for i in range(g + 1))
      rows.append(dict(exit_layer=k, gamma=g, accept=acc[k], draft_ms_per_token=per_token, first_call_ms=p1,
                       draft_share_of_ar=per_token / ar, verify_ms=verify[g + 1], ar_ms=ar, est_tau=tau,
                       est_speedup=tau * ar / (prop + verify[g + 1])))
      print(json.dumps(rows[-1]))
  pathlib.Path(a.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
