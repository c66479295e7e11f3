"""What a process remembers between calls: the one piece of mutable module-level state in specjax.

Programs themselves are pure (DESIGN invariant 4: the KV cache, drafter state and RNG key are values);
what carries over from one call to the next lives in the single `CACHE` below, nowhere else:

- executables: compiled decode programs by signature (static settings, input shapes and dtypes, mesh
  layout; never weights), at most `max_executables`, the oldest dropped first (specjax.program.Program);
- traces: how many times the decode program was traced (tests check that a repeat call adds none);
- prefill_done: host clock (time.perf_counter) when a running program's prefill finished, appended by the
  program's host callback (time_prefill=True; one per device on a mesh) and cleared before each run;
- helpers: small jitted functions beside the decode program, by model graph (the next-token logit gap of
  specjax.program.divergence);
- seen: tree_budget="auto"'s observed acceptance, (drafter key, batch) -> [observed gain, predicted gain]
  summed over calls (specjax.budget.observe);
- compilation_cache_set: JAX's persistent compilation cache configured (once per process).

Measured step costs persist on disk instead (specjax.budget.CostCache), and JAX's persistent compilation
cache holds compiled programs across processes (specjax.program.Program).
"""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass
class ProcessCache:
  """The fields listed in the module docstring; one instance, `CACHE`."""
  executables: dict = dataclasses.field(default_factory=dict)
  traces: int = 0
  prefill_done: list = dataclasses.field(default_factory=list)
  seen: dict = dataclasses.field(default_factory=dict)
  helpers: dict = dataclasses.field(default_factory=dict)
  max_executables: int = 16
  compilation_cache_set: bool = False

  def executable(self, signature, compile_fn: Callable):
    """The executable for `signature`, compiled by compile_fn() at most once while it is kept."""
    if signature not in self.executables:
      if len(self.executables) >= self.max_executables:
        self.executables.pop(next(iter(self.executables)))
      self.executables[signature] = compile_fn()
    return self.executables[signature]

  def clear(self):
    """Forgets every executable and observation (the counters stay: tests compare them across calls)."""
    self.executables.clear()
    self.helpers.clear()
    self.seen.clear()


CACHE = ProcessCache()
