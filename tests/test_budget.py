"""tree_budget="auto": the policy on synthetic verify-cost curves (a smaller budget at a larger batch, no
speculation when a step's cost grows linearly with the tree), the candidates drafters declare, and an
auto generation on a tiny target (same tokens as plain decoding; costs cached)."""
from __future__ import annotations

import dataclasses
import json

import pytest

import specjax
from specjax import budget
from specjax.drafters.medusa import Medusa
from specjax.drafters.ngram import PromptLookup

# tau per node budget, shaped like the shipped Medusa's held-out curve (diminishing returns)
TAU = {0: 1.0, 2: 1.6, 4: 2.0, 8: 2.25, 16: 2.45, 32: 2.6}


def cands(fixed=4):
  return [budget.Candidate(label=f"nodes={n}" if n else "none", options=None if n == 0 else (("nodes", n),),
                           nodes=n + 1, tau=t, safe=n in (0, fixed)) for n, t in TAU.items()]


def pick(cost):
  choice, measured = budget.choose(cands(), lambda cs: {c: cost(c.nodes) for c in cs})
  return choice.nodes - 1, measured


def roofline(B, T, weights_ms=30.0, token_ms=0.5):
  """A step reads the weights once (memory-bound) or does B*T tokens of work (compute-bound), whichever is slower."""
  return max(weights_ms, token_ms * B * T) + 0.05 * B * T


def test_smaller_budget_at_larger_batch_and_none_at_the_largest():
  chosen = {B: pick(lambda T: roofline(B, T))[0] for B in (1, 4, 16, 32, 128)}
  assert chosen[1] >= 8                               # batch 1: memory-bound, a wide tree is nearly free
  assert list(chosen.values()) == sorted(chosen.values(), reverse=True)
  assert chosen[4] < chosen[1] and chosen[128] == 0


def test_linear_cost_means_no_speculation():
  # tau(n) < n + 1 = T for every budget: when cost is proportional to T nothing beats plain decoding
  assert pick(lambda T: 40.0 * T)[0] == 0
  assert pick(lambda T: 10.0 + 40.0 * T)[0] == 0


def test_margin_keeps_a_safe_choice_and_pruning_skips_hopeless_budgets():
  # budget 8 would be 2% ahead of the fixed 4: within the margin, so the fixed budget stays
  flat = {1: 40.0, 3: 40.0, 5: 40.0, 9: 40.0 * 2.25 / 2.0 / 1.02, 17: 400.0, 33: 800.0}
  n, measured = pick(flat.get)
  assert n == 4 and "nodes=8" in measured
  # a step never costs less with more nodes: at the fixed budget's cost (100 ms) no larger budget can beat
  # plain decoding (40 ms), so none is measured; 2 nodes might (its floor is plain decoding's cost)
  n, measured = pick(lambda T: {1: 40.0, 3: 45.0}.get(T, 100.0))
  assert set(measured) == {"none", "nodes=4", "nodes=2"} and n == 2


def test_candidates_from_drafters():
  pld = budget.candidates(PromptLookup(num_tokens=3))
  assert [c.label for c in pld] == ["none", "num_tokens=3", "num_tokens=1", "num_tokens=2"]
  assert [c.safe for c in pld] == [True, True, False, False]
  assert pld[1].tau > pld[3].tau > pld[2].tau > 1.0
  m = Medusa(nodes=6, heldout_tau=(("4", 2.0), ("8", 2.25), ("12", 2.36)))
  c = budget.candidates(m)
  assert [x.label for x in c] == ["none", "nodes=6", "nodes=4", "nodes=8", "nodes=12"]
  assert c[1].tau == 2.0 and c[1].nodes == 7           # unmeasured 6: the measured budget below it
  with pytest.raises(ValueError, match="no measured acceptance"):
    budget.candidates(Medusa())
  assert m == dataclasses.replace(m, heldout_tau=())    # not part of the program's identity


def test_observed_batch_tau_scales_the_predicted_gain():
  key = ("fingerprint", "drafter")
  assert budget.observed_gain(key, 3) == 1.0
  # the batch ran 25 steps (its slowest row) for 32 tokens: batch tau 1.28 where 2.0 was predicted
  budget.observe(key, 3, 2.0, new_tokens=[32, 32, 20], forwards=[16, 20, 25])
  assert budget.observed_gain(key, 3) == pytest.approx(0.28) and budget.observed_gain(key, 4) == 1.0
  c = budget.candidates(PromptLookup(num_tokens=2), gain=0.5)
  assert [x.tau for x in c[:2]] == [1.0, pytest.approx(1 + 0.5 * 0.64)]


def test_auto_generation_matches_plain_and_caches_costs(tiny, tmp_path, monkeypatch):
  path = tmp_path / "costs.json"
  monkeypatch.setenv("SPECJAX_COST_CACHE", str(path))
  prompts = [[5, 6, 7, 5, 6, 7, 5, 6], [9, 10, 11, 9, 10]]
  plain = specjax.generate(tiny, prompts, max_new_tokens=12, drafter="none")
  auto = specjax.generate(tiny, prompts, max_new_tokens=12, drafter="pld", num_tokens=2, tree_budget="auto")
  assert auto.token_ids == plain.token_ids
  assert {"none", "num_tokens=2"} <= set(auto.budget_ms) and auto.budget in auto.budget_ms
  assert (auto.drafter == "none") == (auto.budget == "none")
  stored = json.loads(path.read_text())
  assert len(stored) == len(auto.budget_ms)
  again = specjax.generate(tiny, prompts, max_new_tokens=12, drafter="pld", num_tokens=2, tree_budget="auto")
  assert again.token_ids == plain.token_ids
  assert {k: again.budget_ms[k] for k in auto.budget_ms} == auto.budget_ms     # read back, not re-measured
  with pytest.raises(ValueError, match="tree_budget"):
    specjax.generate(tiny, prompts, max_new_tokens=4, drafter="pld", tree_budget="big")
