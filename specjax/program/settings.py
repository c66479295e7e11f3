"""One generation's settings, validated once: sampling, seed, budget, the drafter (built once), chat, max tokens.

The API, the command line, batch jobs and the bench each make one `Settings` (Settings.make) before any
model loads, then hand it to the program layer (specjax.program.Program); nothing checks them again.
"""
from __future__ import annotations

import dataclasses

from specjax import budget as budget_lib
from specjax import numerics
from specjax.checks import flag, is_finite, is_int, positive_int
from specjax.drafters import registry
from specjax.engine import accept as accept_lib
from specjax.program.inputs import check_chat
from specjax.protocol import Drafter

# Below this, float32 logits / temperature overflow XLA's softmax (NaN probabilities) and sampling
# silently returns garbage; 0 is greedy.
MIN_TEMPERATURE = 1e-4
SEED_LIMIT = 2 ** 32     # jax.random.key keeps 32 bits of a seed (without x64): larger seeds alias smaller ones


def check_sampling(temperature=0.0, top_k=None, top_p=None, acceptance=None):
  """Validates the sampling settings without a model (the CLI calls it before loading one). Returns
  (temperature, top_k, top_p, acceptance) as float, int | None, float | None, rule name."""
  if not is_finite(temperature) or temperature < 0:
    raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
  if 0 < temperature < MIN_TEMPERATURE:
    raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature!r}")
  if top_k is not None and (not is_int(top_k) or top_k < 1):
    raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
  if top_p is not None and (not is_finite(top_p) or not 0 < top_p <= 1):
    raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
  if acceptance is None:
    acceptance = "greedy" if temperature == 0 else "sample"
  if acceptance not in accept_lib.RULES:
    raise ValueError(f"unknown acceptance {acceptance!r}; choose from {', '.join(accept_lib.RULES)}")
  if acceptance != "greedy" and temperature == 0:
    acceptance = "greedy"
  if acceptance == "greedy" and temperature > 0:
    raise ValueError("acceptance='greedy' needs temperature=0; use 'sample' for temperature > 0")
  return (float(temperature), None if top_k is None else int(top_k), None if top_p is None else float(top_p),
          acceptance)


def check_seed(seed) -> int:
  if not is_int(seed) or not 0 <= seed < SEED_LIMIT:
    raise ValueError(f"seed must be an integer in [0, {SEED_LIMIT - 1}], got {seed!r}")
  return int(seed)


def check_tree_budget(tree_budget) -> str:
  if tree_budget not in (None, "fixed", "auto"):
    raise ValueError(f"tree_budget must be 'auto' or 'fixed' (the drafter's own options), got {tree_budget!r}")
  return tree_budget or "fixed"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """Validated settings of a generation (make them with `Settings.make`).

  drafter: the configured drafter, weights included (built once); acceptance: the rule name resolved
  from temperature; tree_budget: "fixed" or "auto"; precision: "exact", "fast" or None (the target's own)."""
  drafter: Drafter
  max_new_tokens: int = 128
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  acceptance: str = "greedy"
  seed: int = 0
  chat: bool = True
  allow_special: bool = False
  tree_budget: str = "fixed"
  time_prefill: bool = False
  precision: str | None = None

  @classmethod
  def make(cls, *, drafter="none", drafter_options: dict | None = None, max_new_tokens=128, temperature=0.0,
           top_k=None, top_p=None, acceptance=None, seed=0, chat=True, allow_special=False, tree_budget=None,
           time_prefill=False, precision=None) -> Settings:
    """Every check that needs no model, in the order the API has always reported them; a drafter name (or
    instance) with drafter_options becomes the drafter. tree_budget="auto" needs a drafter with measured
    budgets (else ValueError now, not after loading a model)."""
    seed = check_seed(seed)
    tree_budget = check_tree_budget(tree_budget)
    flag(time_prefill, "time_prefill")
    check_chat(chat, allow_special)
    if precision is not None:
      numerics.check(precision)
    max_new_tokens = positive_int(max_new_tokens, "max_new_tokens")
    temperature, top_k, top_p, acceptance = check_sampling(temperature, top_k, top_p, acceptance)
    d = registry.make(drafter, **(drafter_options or {}))
    if tree_budget == "auto":
      budget_lib.candidates(d)            # nothing measured to choose from: refused now
    return cls(drafter=d, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
               acceptance=acceptance, seed=seed, chat=chat, allow_special=allow_special, tree_budget=tree_budget,
               time_prefill=time_prefill, precision=precision)

  def replace(self, **changes) -> Settings:
    """A copy with `changes` (already valid values: a Drafter, not a name)."""
    return dataclasses.replace(self, **changes)

  @property
  def sampling(self) -> dict:
    return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, acceptance=self.acceptance)
