"""tree_budget="auto" in the program: each candidate budget's step cost measured with the real compiled
program (specjax/budget.py chooses), and what each call achieved fed back (budget.observe)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from specjax import budget as budget_lib
from specjax.drafters.base import NoDrafter


def label(d) -> str:
  """The budget a drafter runs at as configured: "nodes=4", "fixed" (nothing measured), "none"."""
  return "none" if d.name == "none" else ",".join(f"{k}={getattr(d, k)}" for k in
                                                  dict.fromkeys(k for o, _ in d.budgets() for k in o)) or "fixed"


def learn(target, user, budget: str, batch: int, res) -> None:
  """Feeds tree_budget="auto" the batch tau this call achieved at budget `budget` (budget.observe)."""
  if budget == "none" or not user.budgets():
    return
  tau = {c.label: c.tau for c in budget_lib.candidates(user)}.get(budget)
  if tau:
    budget_lib.observe((target.fingerprint, repr(user)), batch, tau, res.new_tokens.tolist(), res.forwards.tolist())


def choose(program, ids, settings, steps: int = 6, rounds: int = 3):
  """(prepared call, budget label, {label: step ms}) of the budget that budget.choose picks from the
  settings' drafter's candidates, each candidate's step cost measured here (at this batch size, buffer
  length and mesh) or read from budget.CostCache. A drafter with a per-step gate (Drafter.gated) runs gated,
  its threshold set by the measured costs ("nodes=4,gate=0.57").

  A step's cost: the fastest of `rounds` runs of 1 + k loop steps minus the fastest of `rounds` runs of
  one step (prefill and dispatch cancel), over k; the candidates measured together take turns, so a
  burst of load elsewhere on the machine does not fall on one of them only."""
  target, user = program.target, settings.drafter
  full = user.gated(1.0) or user      # a per-step gate (Cerberus) is timed drafting at every step
  cache = budget_lib.CostCache()
  B = len(ids)
  machine = (budget_lib.machine_key(), target.fingerprint, str(np.dtype(target.model.dtype)),
             None if program.layout is None else dict(program.layout.mesh.shape))
  prepared = {}

  def measure(cands) -> dict:
    out, todo = {}, {}
    for c in cands:
      d = NoDrafter() if c.options is None else dataclasses.replace(full, **dict(c.options))
      try:
        prepared[c] = program.prepare(ids, settings, drafter=d)
      except ValueError:            # e.g. a deeper tree that overflows the context: never chosen
        out[c] = float("inf")
        continue
      cspec = prepared[c].spec
      timing = dataclasses.replace(cspec, timing=True)
      k = max(1, min(steps, (cspec.max_len - 4) // (d.max_depth + 1) - 1))
      key = budget_lib.program_key(machine, repr(timing), B, k)
      if (ms := cache.get(key)) is not None:
        out[c] = ms
        continue
      # Prompts of two tokens in the real buffer length: a step's cost depends on the buffer, not on the
      # prompt, and the runs skip the real prompts' prefill; done rows cost what live ones do.
      run = dataclasses.replace(prepared[c], spec=timing,
                                inputs=(jnp.ones((B, 2), jnp.int32), jnp.full((B,), 2, jnp.int32)))
      program.timed(run, 1)                                      # compiles
      todo[c] = (key, k, run, [], [])
    for _ in range(rounds):
      for key, k, run, one, more in todo.values():
        one.append(program.timed(run, 1))
        more.append(program.timed(run, 1 + k))
    for c, (key, k, run, one, more) in todo.items():
      out[c] = 1e3 * max(min(more) - min(one), 1e-6) / k
    cache.put({todo[c][0]: out[c] for c in todo})
    return out

  gain = budget_lib.observed_gain((target.fingerprint, repr(dataclasses.replace(full, params=None))), B)
  cands = budget_lib.candidates(full, gain)
  choice, ms = budget_lib.choose(cands, measure)
  if full is not user:
    # The gate decides each step: at the chosen budget (the fixed one where plain decoding won on average, as
    # some steps may still pay), its threshold from that drafting step's measured cost over a plain step's.
    at = choice if choice.options is not None else next(c for c in cands if c.options == ())
    d = dataclasses.replace(user, **dict(at.options)).gated(ms[at.label] / ms["none"])
    return program.prepare(ids, settings, drafter=d), f"{at.label},gate={d.gate:g}", ms
  return prepared[choice], "none" if choice.options is None else choice.label, ms
