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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from common import machine, verify_ms, best_ms  # noqa: E402

import specjax  # noqa: E402
from specjax.drafters import registry  # noqa: E402
from specjax.io import checkpoint  # noqa: E402
from specjax.protocol import Acceptance, Context, Models, Prefill, Step  # noqa: E402


def draft_ms(t, d, ctx=256, S=512):
  """(propose ms, update ms) of drafter d at batch 1 with `ctx` committed tokens."""
  gd, params = nnx.split(t.model)
  H = t.cfg.hidden
  tokens = jnp.ones((1, S), jnp.int32)
  c = Context(tokens, jnp.full((1,), ctx), jnp.full((1,), ctx - 100), jnp.zeros(1, bool))
  pre = Prefill(jnp.ones((1, ctx - 1, H), jnp.float32), {})

  def init(tp, dp):
    return d.init(Models(nnx.merge(gd, tp), nnx.merge(d.graphdef, dp)), c, pre)

  def propose(tp, dp, state):
    return d.propose(Models(nnx.merge(gd, tp), nnx.merge(d.graphdef, dp)), state, c)[0].tokens

  D = d.max_depth
  T = d.num_nodes
  step = Step(None, None, jnp.ones((1, T, H), jnp.float32), {},
              Acceptance(jnp.arange(D + 1)[None].astype(jnp.int32), jnp.full((1,), D, jnp.int32), jnp.zeros(1, jnp.int32)),
              jnp.full((1,), D + 1, jnp.int32))
  c2 = Context(tokens, jnp.full((1,), ctx + D + 1), c.prompt_len, c.done)

  def update(tp, dp, state):
    return d.update(Models(nnx.merge(gd, tp), nnx.merge(d.graphdef, dp)), state, c2, step)["u"]

  state = jax.jit(init)(params, d.params)
  return best_ms(jax.jit(propose), params, d.params, state), best_ms(jax.jit(update), params, d.params, state)


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
      T = d.num_nodes
      if T not in verify:
        verify[T] = verify_ms(t, T)
      prop, upd = draft_ms(t, d)
      tau = ev["tau_by_nodes"].get(b)
      row = {"drafter": name, "budget": b, "T": T, "propose_ms": prop, "update_ms": upd, "verify_ms": verify[T],
             "ar_step_ms": ar, "tau_heldout": tau}
      row["draft_share"] = (prop + upd) / (prop + upd + verify[T])
      if tau:
        row["est_speedup"] = tau * ar / (prop + upd + verify[T])
      report["rows"].append(row)
      print(json.dumps(row), flush=True)
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
