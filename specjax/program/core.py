"""`Program`: the decode program of one target, owning preparation, compilation, mesh placement, running
and timing. The API (specjax.api.generate), batch jobs, the bench and training data all generate here.

In the spirit of flax's gemma sampler: the object holds only static things (the target's graph, the mesh
layout); weights (target and drafter) are arguments of the compiled program, never constants, so new
weights never run a stale executable and never recompile. Compiled executables are kept in the process
cache (specjax.process_cache.CACHE) by signature: static settings and input shapes, never values.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import numerics
from specjax.engine import accept as accept_lib
from specjax.engine import decode
from specjax.io import Target
from specjax.process_cache import CACHE
from specjax.program import auto, sharded
from specjax.program.inputs import check_fits, check_target
from specjax.program.settings import Settings

BUCKET = 64   # prompt lengths are padded to a multiple of this, so similar prompts share one compile


def round_up(n, m):
  return -(-n // m) * m


@dataclasses.dataclass
class Generation:
  """texts[i], token_ids[i]: the i-th prompt's answer. Per row: new_tokens, target_forwards, tau,
  accepted_hist (steps that accepted 0..D draft tokens). Whole call: wall_s (run, excluding
  compilation and, with tree_budget="auto", its step-cost measurements), compile_s, tokens_per_s (all
  rows' new tokens / wall_s); with time_prefill=True, prefill_s: the part of wall_s spent before the
  first decode step (the prompts' forward: time to first token less one step) and decode_tokens_per_s:
  new tokens / (wall_s - prefill_s), else None; budget: the tree budget run ("nodes=4"; "none" when auto chose no
  speculation, then drafter is "none"), with budget_ms the measured step costs auto compared; precision:
  the numerics policy, "exact" or "fast" (specjax/numerics.py)."""
  texts: list[str]
  token_ids: list[list[int]]
  new_tokens: list[int]
  target_forwards: list[int]
  tau: list[float]
  accepted_hist: list[list[int]]
  wall_s: float
  compile_s: float
  tokens_per_s: float
  drafter: str
  acceptance: str
  lossless: bool
  budget: str = ""
  budget_ms: dict = dataclasses.field(default_factory=dict)
  prefill_s: float | None = None
  decode_tokens_per_s: float | None = None
  precision: str = "exact"     # the numerics policy it ran under (specjax/numerics.py)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """One call of the compiled program: its static spec, the drafter's weights, and the device inputs
  (prompt [B, P], prompt_len [B], max_new []; a timing run adds its step count)."""
  spec: decode.Spec
  dparams: object
  inputs: tuple


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished run: result (host decode.Result), wall_s (run seconds), compile_s, prefill_s (from the call
  to the prefill's end, as the program's host callback saw it; None unless spec.time_prefill)."""
  result: decode.Result
  wall_s: float
  compile_s: float
  prefill_s: float | None


class Program:
  """The decode program of `target`, sharded over `mesh` (default: the mesh the target was loaded on;
  None: one device)."""

  def __init__(self, target: Target, mesh=None):
    self.target = check_target(target)
    self.mesh = target.mesh if sharded.check_mesh(mesh) is None else mesh
    self.layout = None if self.mesh is None else sharded.layout(self.mesh, target.cfg)

  @property
  def rows_multiple(self) -> int:
    """A batch splits evenly over the mesh's "data" axis: its size must be a multiple of this."""
    return 1 if self.mesh is None else self.mesh.shape["data"]

  def prepare(self, prompt_ids: list[list[int]], settings: Settings, drafter=None) -> Prepared:
    """The spec and device inputs for these prompts (token ids), with `drafter` (default: the settings')."""
    d = settings.drafter if drafter is None else drafter
    target = self.target
    d.check_target(target)
    longest = max(len(p) for p in prompt_ids)
    check_fits(target, longest, settings.max_new_tokens, d)
    P = round_up(longest, BUCKET)
    S = round_up(P + settings.max_new_tokens + d.max_depth + 2, BUCKET)
    precision = target.precision if settings.precision is None else settings.precision
    # The static configuration never holds weights: they travel as a program argument (`drafter_params`).
    spec = decode.Spec(drafter=dataclasses.replace(d, params=None), max_len=S, eos_ids=tuple(target.tokenizer.eos_ids),
                       **settings.sampling, precision=precision)
    prompt = np.zeros((len(prompt_ids), P), np.int32)
    for i, p in enumerate(prompt_ids):
      prompt[i, :len(p)] = p
    lens = np.array([len(p) for p in prompt_ids], np.int32)
    inputs = (jnp.asarray(prompt), jnp.asarray(lens), jnp.asarray(settings.max_new_tokens, jnp.int32))
    return Prepared(spec, d.params, inputs)

  def lower(self, prepared: Prepared, key) -> jax.stages.Lowered:
    """The one-device program for this call, lowered but not compiled (`.as_text()` shows every dot's numerics)."""
    graphdef, params = nnx.split(self.target.model)
    return _lower(graphdef, prepared.spec, params, prepared.dparams, prepared.inputs, key, None)

  def executable(self, prepared: Prepared, key):
    """(compiled program, its arguments) for this call, placed on the mesh where there is one and compiled
    at most once per signature: the static spec, the shapes and dtypes of weights and inputs, and the mesh
    layout with its shardings."""
    graphdef, params = nnx.split(self.target.model)
    spec, dparams, inputs, lay = prepared.spec, prepared.dparams, prepared.inputs, self.layout
    if lay is not None:
      spec = dataclasses.replace(spec, cache_sharding=sharded.cache_sharding(lay),
                                 state_placement=sharded.state_placement(lay, spec.drafter))
      params, dparams, inputs, key = sharded.place(lay, params, dparams, inputs, key)
    shapes = lambda tree: tuple((x.shape, x.dtype) for x in jax.tree.leaves(tree))
    sig = (graphdef, spec, shapes(inputs), shapes(params), shapes(dparams), lay)

    def compile_():
      compilation_cache()
      return _lower(graphdef, spec, params, dparams, inputs, key, lay).compile()
    return CACHE.executable(sig, compile_), (params, dparams, *inputs, key)

  def run(self, prepared: Prepared, key) -> Run:
    """Compiles (at most once) and runs the program; the result comes back to the host."""
    t0 = time.perf_counter()
    fn, args = self.executable(prepared, key)
    CACHE.prefill_done.clear()
    t1 = time.perf_counter()
    res = fn(*args)
    res = sharded.gather(res) if self.layout is not None else jax.device_get(res)
    t2 = time.perf_counter()
    # A sharded program calls back once per device: the last one marks the end.
    stamps = CACHE.prefill_done
    prefill = max(stamps) - t1 if prepared.spec.time_prefill and stamps else None
    return Run(res, t2 - t1, t1 - t0, prefill)

  def timed(self, prepared: Prepared, steps: int) -> float:
    """Seconds of one run of a timing program (spec.timing) for `steps` loop steps."""
    prepared = dataclasses.replace(prepared, inputs=(*prepared.inputs, jnp.asarray(steps, jnp.int32)))
    return self.run(prepared, jax.random.key(0)).wall_s

  def generate(self, prompt_ids: list[list[int]], settings: Settings) -> Generation:
    """Generates for a batch of prompts given as token ids, in one compiled program."""
    rows = len(prompt_ids)
    ids = prompt_ids + [prompt_ids[0]] * (-rows % self.rows_multiple)   # pad with copies of the first prompt
    prepared = self.prepare(ids, settings)
    user = prepared.spec.drafter       # as configured (its fixed budget), without weights
    budget, budget_ms = auto.label(user), {}
    if settings.tree_budget == "auto":
      if self.layout is not None and any(d.process_index != jax.process_index() for d in self.mesh.devices.flat):
        # Each process would measure (and choose) on its own, and their programs must be the same one.
        raise ValueError("tree_budget='auto' on a mesh across processes is not supported yet; use a fixed budget "
                         "(a multi-host batch job, whose processes work apart, may use auto)")
      prepared, budget, budget_ms = auto.choose(self, ids, settings)
    prepared = dataclasses.replace(prepared, spec=dataclasses.replace(prepared.spec, time_prefill=settings.time_prefill))
    run = self.run(prepared, jax.random.key(settings.seed))
    res = jax.tree.map(lambda x: x[:rows], run.result)
    auto.learn(self.target, user, budget, len(ids), res)
    if res.nan.any():
      bad = np.flatnonzero(res.nan).tolist()
      raise FloatingPointError(f"the target produced NaN logits (rows {bad}); its weights or dtype are broken "
                               "(check the checkpoint, or try dtype='float32')")
    return self._generation(ids[:rows], res, run, prepared.spec, budget, budget_ms)

  def _generation(self, ids, res, run: Run, spec, budget, budget_ms) -> Generation:
    token_ids = [res.tokens[i, len(p):len(p) + int(res.new_tokens[i])].tolist() for i, p in enumerate(ids)]
    new = [int(x) for x in res.new_tokens]
    fw = [int(x) for x in res.forwards]
    wall, prefill_s = run.wall_s, run.prefill_s
    return Generation(texts=[self.target.tokenizer.decode(t) for t in token_ids], token_ids=token_ids, new_tokens=new,
                      target_forwards=fw, tau=[n / max(f, 1) for n, f in zip(new, fw)],
                      accepted_hist=res.accepted_hist.tolist(), wall_s=wall, compile_s=run.compile_s,
                      tokens_per_s=sum(new) / max(wall, 1e-9), prefill_s=prefill_s,
                      decode_tokens_per_s=None if prefill_s is None else sum(new) / max(wall - prefill_s, 1e-9),
                      drafter=spec.drafter.name, acceptance=spec.acceptance,
                      lossless=accept_lib.LOSSLESS[spec.acceptance], budget=budget, budget_ms=budget_ms,
                      precision=spec.precision)


def _lower(graphdef, spec, params, dparams, inputs, key, lay) -> jax.stages.Lowered:
  """The decode program traced and lowered under the spec's numerics policy (lay: the mesh layout, or None)."""
  run = functools.partial(decode.run, graphdef, spec=spec)
  if lay is None:
    program = jax.jit(run)
  else:
    program = jax.jit(run, in_shardings=sharded.in_shardings(lay, params, dparams),
                      out_shardings=sharded.out_shardings(lay))
  with numerics.scope(spec.precision):
    return program.lower(params, dparams, *inputs, key)


def compilation_cache():
  """JAX's persistent compilation cache in a user cache directory, so a new process (the CLI, a
  notebook restart) loads compiled programs instead of compiling them again; set up once per process
  (CACHE.compilation_cache_set). Off with SPECJAX_COMPILATION_CACHE=0; a cache directory the user
  configured is left alone."""
  if CACHE.compilation_cache_set:
    return
  CACHE.compilation_cache_set = True
  setting = os.environ.get("SPECJAX_COMPILATION_CACHE", "1")
  if setting.lower() in ("0", "off", "false", "no") or jax.config.jax_compilation_cache_dir:
    return
  path = setting if setting not in ("1", "on", "true", "yes") else str(
      pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "specjax" / "xla")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", 2 * 1024**3)     # bytes; least recently used go first
