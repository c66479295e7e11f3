"""Speculation sized to the batch (`tree_budget="auto"`; Su, Giannoula, Pekhimenko 2023).

A speculative step at batch B verifies B x T tokens. Where a step is memory-bound (batch 1 on most
machines) a wider tree is nearly free; as B grows the forward turns compute-bound and every extra node
costs, until plain decoding (T = 1) is fastest. So the budget is chosen per batch size, by

    tokens/s(n) ~ tau(n) / step_ms(B, n)

over the drafter's measured budgets n (`Drafter.budgets()`: held-out tau from training, or a recorded
benchmark for weightless drafters) and no speculation (tau 1). step_ms is MEASURED on this machine: one
loop step of the real compiled program (draft, verify, accept, commit) at this batch and buffer length,
kept in a small JSON cache keyed by device, model fingerprint, dtype and program (`CostCache`).

tau(n) is corrected by what this process has seen. A batch runs until its slowest row is done, so what a
batch gains from speculation is max(new tokens) / max(target forwards) over its rows, which falls below
the held-out tau as rows grow more ragged (larger B) and whenever the prompts are harder than the
training data. Every speculative call records that batch tau beside the model's tau for the budget it ran
(`observe`), per drafter configuration and batch size, and later choices scale the model's gain:
tau'(n) = 1 + r (tau(n) - 1), r = the observed gain over the predicted gain. A batch job or a benchmark
thus converges to its own prompts after one batch; a first call uses the recorded tau alone.

Never slower than the better of plain decoding and the fixed budget: those two are always candidates,
both costs are measured, and another budget replaces the better of them only when its estimate is
`MARGIN` ahead (so an estimation error of tau smaller than the margin cannot make auto lose). Measured
costs are made non-decreasing in the tree size (a larger tree never costs less; a lower reading is noise).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Callable, Sequence

from specjax.process_cache import CACHE

MARGIN = 0.05     # an unsafe candidate must beat the safe ones by 5%: tau and timing noise are about that size


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
  """One budget: label ("none", "nodes=4", ...), options that set it (None: no speculation), tree size T
  (nodes, root included), expected tokens per target forward tau, and whether it is safe (the user's fixed
  budget, or no speculation)."""
  label: str
  options: tuple | None
  nodes: int
  tau: float
  safe: bool = False


def candidates(drafter, gain: float = 1.0) -> list[Candidate]:
  """No speculation, the drafter's own (fixed) budget, and every other measured budget it can run at.
  The fixed budget's tau is its measured one, else that of the best measured budget no larger than it
  (a bigger tree accepts at least as much), else 1. gain scales every budget's tau - 1 (see `observed_gain`)."""
  none = Candidate(label="none", options=None, nodes=1, tau=1.0, safe=True)
  if drafter.name == "none":
    return [none]
  measured = drafter.budgets()
  if not measured:
    raise ValueError(f"tree_budget='auto': drafter {drafter.name!r} has no measured acceptance to size its tree "
                     "by (its checkpoint records no held-out tau); use a fixed budget")
  own = lambda opts: all(getattr(drafter, k) == v for k, v in opts.items())
  fixed_tau = next((t for o, t in measured if own(o)), None)
  others = []
  for opts, tau in measured:
    if own(opts):
      continue
    try:
      d = dataclasses.replace(drafter, **opts)
      d.validate()
    except (TypeError, ValueError):      # a budget this configuration cannot take
      continue
    others.append(Candidate(label=_label(opts), options=tuple(sorted(opts.items())), nodes=d.num_nodes, tau=tau))
  if fixed_tau is None:
    fixed_tau = max([1.0] + [c.tau for c in others if c.nodes <= drafter.num_nodes])
  fixed = Candidate(label=_label({k: getattr(drafter, k) for o, _ in measured for k in o}) or "fixed", options=(),
                    nodes=drafter.num_nodes, tau=fixed_tau, safe=True)
  cands = [fixed] + sorted(others, key=lambda c: c.nodes)
  return [none] + [dataclasses.replace(c, tau=1.0 + gain * (c.tau - 1.0)) for c in cands]


# ------------------------------------------------------------------ observed acceptance

def observe(key, batch: int, predicted_tau: float, new_tokens, forwards):
  """Records one call: its rows' new tokens and target forwards, run at a budget whose model tau was
  predicted_tau (kept in specjax.process_cache.CACHE.seen). The batch's tau is max(new) / max(forwards):
  the batch ran max(forwards) steps for what plain decoding does in max(new)."""
  if predicted_tau <= 1.0 or max(forwards, default=0) <= 0:
    return
  seen = CACHE.seen.setdefault((key, batch), [0.0, 0.0])
  seen[0] += max(new_tokens) / max(forwards) - 1.0
  seen[1] += predicted_tau - 1.0


def observed_gain(key, batch: int) -> float:
  """r: observed over predicted gain of tau for this drafter configuration and batch size (1 when nothing
  was seen), within [0, 1.5]."""
  seen = CACHE.seen.get((key, batch))
  return 1.0 if not seen or seen[1] <= 0 else min(max(seen[0] / seen[1], 0.0), 1.5)


def _label(opts: dict) -> str:
  return ",".join(f"{k}={v}" for k, v in opts.items())


def choose(cands: Sequence[Candidate], measure: Callable[[list[Candidate]], dict], margin: float = MARGIN
           ) -> tuple[Candidate, dict]:
  """The candidate with the most tokens per ms, tau / step_ms; one that is not safe must beat the best
  safe one by `margin`. measure(candidates) -> {candidate: step ms} (measured together, so they share the
  machine's load). Returns (choice, {label: step ms}).

  The safe candidates are measured first (together); the others one by one from the smallest tree, each
  only if it could still win at the cost of the largest tree measured below it (a step never costs less
  with more nodes), so slow measurements run only where they can change the answer."""
  cands = list(cands)
  ms = dict(measure([c for c in cands if c.safe]))
  # Cost made non-decreasing in T; for a candidate not measured yet, a lower bound of its cost.
  cost = lambda c: max(v for k, v in ms.items() if k.nodes <= c.nodes)
  rate = lambda c: c.tau / cost(c)
  need = (1 + margin) * max(rate(c) for c in ms)
  for c in sorted((c for c in cands if not c.safe), key=lambda c: c.nodes):
    if rate(c) > need:
      ms.update(measure([c]))
      need = max(need, rate(c))
  best_safe = max((c for c in ms if c.safe), key=rate)
  best = max(ms, key=rate)
  choice = best if best.safe or rate(best) > (1 + margin) * rate(best_safe) else best_safe
  return choice, {c.label: v for c, v in ms.items()}


# ------------------------------------------------------------------ measured step costs

def cache_path() -> pathlib.Path:
  """$SPECJAX_COST_CACHE, else <XDG cache>/specjax/step_costs.json."""
  env = os.environ.get("SPECJAX_COST_CACHE")
  if env:
    return pathlib.Path(env)
  return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "specjax" / "step_costs.json"


def machine_key() -> str:
  """Device kind and count, plus the CPU model on CPU (the same code runs at very different speeds on the
  CPUs here, so a cost measured on one never stands for another)."""
  import jax
  d = jax.devices()
  kind = f"{d[0].platform}:{d[0].device_kind}x{len(d)}"
  if d[0].platform == "cpu":
    try:
      with open("/proc/cpuinfo") as f:
        kind += ":" + next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
      pass
  return kind


def program_key(*parts) -> str:
  return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class CostCache:
  """{key: step ms} in a JSON file. Unreadable or foreign files are ignored (and replaced on write); writes
  are atomic, so concurrent processes can at worst lose each other's newest entries."""

  def __init__(self, path: pathlib.Path | None = None):
    self.path = pathlib.Path(path) if path else cache_path()
    try:
      data = json.loads(self.path.read_text(encoding="utf-8"))
      self.data = {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError, AttributeError):
      self.data = {}

  def get(self, key: str) -> float | None:
    return self.data.get(key)

  def put(self, entries: dict):
    self.data.update(entries)
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
      tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
      os.replace(tmp, self.path)
    except OSError:
      pass          # a read-only home: measure again next time
