"""`make demo`'s one line on why a drafter does or does not pay: the measured step cost in one-token steps
against the tokens the drafter accepts per step."""
import dataclasses
import types

import specjax
from specjax import budget, demo
from specjax.drafters import registry


def test_why_names_the_measured_cost_ratio_when_auto_ran_plain_decoding():
  cands = {c.label: c for c in budget.candidates(registry.make("pld"))}
  small = min((c for c in cands.values() if c.options), key=lambda c: c.nodes)
  g = types.SimpleNamespace(budget="none", budget_ms={"none": 20.0, small.label: 50.0}, tau=[1.0])
  line = demo.why("pld", registry.make("pld"), g)
  assert f"verifying {small.nodes} tokens ({small.label}) costs 2.50x a one-token step" in line
  assert f"accepts {small.tau:.2f} tokens per step" in line and "auto ran plain decoding instead" in line


def test_why_on_a_real_auto_call(tiny, tmp_path, monkeypatch):
  monkeypatch.setenv("SPECJAX_COST_CACHE", str(tmp_path / "costs.json"))
  g = specjax.generate(tiny, [[5, 6, 7, 5, 6, 7, 5, 6]], max_new_tokens=8, drafter="pld", num_tokens=2,
                       tree_budget="auto")
  label = g.budget if g.budget != "none" else min((k for k in g.budget_ms if k != "none"),
                                                  key=lambda k: int(k.split("=")[1]))
  assert f"costs {g.budget_ms[label] / g.budget_ms['none']:.2f}x a one-token step" in demo.why("pld", registry.make("pld", num_tokens=2), g)
  fixed = types.SimpleNamespace(budget="num_tokens=2", budget_ms={}, tau=[1.5])
  assert "--tree-budget auto" in demo.why("pld", registry.make("pld"), fixed)


def test_the_demo_offers_a_trained_drafter_its_two_smallest_budgets():
  full, d = registry.make("eagle3"), demo.drafter("eagle3")
  nodes = sorted(dataclasses.replace(full, **o).num_nodes for o, _ in full.budgets())
  assert len(nodes) > 2 and sorted(dataclasses.replace(d, **o).num_nodes for o, _ in d.budgets()) == nodes[:2]
  assert d == full            # the same options: the same compiled program
