"""The drafter training loop: optax AdamW with warm-up + cosine decay and gradient clipping, a jitted
step, orbax checkpoints every `save_every` steps, exact resume (same optimiser state, same data
order: batch s is a function of the seed and s alone), held-out evaluation with the expected
acceptance length of the tree the drafter will use. Each method's recipe and losses sit beside it
(train/medusa.py, train/early_exit.py, train/clover.py, train/eagle.py; what the whole-sequence ones share
in train/sequence.py); `RECIPES` is read from them.

Training runs in float32: the heads are small (a few M parameters), the CPU's float32 matmuls are
several times faster than its bfloat16 ones (DESIGN.md), and the shipped checkpoint is cast to
bfloat16 once at the end.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
import time

import jax
import numpy as np
import optax

from specjax.drafters import registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Training settings. Fields left None take the drafter recipe's defaults (`Recipe.defaults`)."""
  drafter: str = "medusa"
  steps: int = 2000
  batch: int | None = None    # Medusa: positions per step (256); Clover, EAGLE: sequences per step (4)
  lr: float = 1e-3
  warmup: int = 100
  weight_decay: float | None = None   # AdamW's; eagle and clover2 0.01 (torch's default, as their public trainers)
  clip: float | None = None   # gradient clipping: by global norm (Medusa 1.0, EAGLE-3 0.5) or by value (Clover, EAGLE 0.5)
  clip_by: str | None = None  # "norm" (global norm) or "value"
  b1: float = 0.9
  b2: float | None = None     # Medusa 0.999; Clover 0.95 (the public Clover-2 trainer)
  seed: int = 0
  eval_every: int = 500
  save_every: int = 250
  eval_positions: int = 8192
  heads: int | None = None    # Medusa, Clover: heads (tree depth, 4); EAGLE-3: training-time-test steps (7)
  layers: int = 1             # Medusa: ResBlocks per head; Clover: augmenting decoder layers
  draft_vocab: int = 4096     # 0: the full vocabulary (4096 measured best, BENCHMARKS.md)
  exit_layer: int = 0         # early-exit: the adapter reads the residual after the target's first K layers
  nodes: int = 12             # tree budget used for the tau estimate and stored in the checkpoint
  # eagle, eagle3, clover2: "full" soft targets recomputed from the stored hidden states with the frozen
  # head (the public trainers); "top8": the target's stored top-8 probabilities (the earlier recipe)
  targets: str = "full"
  own_head: bool | None = None  # eagle3: train its own draft-vocabulary head (default) instead of the target's frozen rows; parallelspec: EAGLE-3's host

  def resolved(self) -> "TrainConfig":
    d = RECIPES[self.drafter].defaults_for(self.drafter)
    return dataclasses.replace(self, **{k: v for k, v in d.items() if getattr(self, k) is None})


def _schedule(c: TrainConfig):
  return optax.warmup_cosine_decay_schedule(0.0, c.lr, max(c.warmup, 1), max(c.steps, c.warmup + 1), c.lr * 0.05)


def optimizer(c: TrainConfig):
  clip = optax.clip(c.clip) if c.clip_by == "value" else optax.clip_by_global_norm(c.clip)
  return optax.chain(clip, optax.adamw(_schedule(c), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay))


def batch_indices(n: int, step: int, batch: int, seed: int) -> np.ndarray:
  """Units of batch `step`: epochs of a seeded permutation, so a resumed run sees the same data."""
  per_epoch = max(n // batch, 1)
  epoch, i = divmod(step, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[i * batch:(i + 1) * batch]


def _recipes() -> dict:
  """drafter name -> its recipe: the `RECIPE` of its method's training module, specjax/train/<module>.py
  (the registry lists the drafters whose method has one)."""
  return {name: importlib.import_module(f"specjax.train.{registry.module_of(name)}").RECIPE
          for name in registry.trained()}


RECIPES = _recipes()


def initial_state(recipe, opt, place):
  """(params, opt_state, consts, target weights or None) of a run's start, placed by `place` (None: one
  device): the drafter's parameters replicated, its optimiser state following them, the consts by the
  partition rules. The target's weights are returned only for features on the fly (`recipe.train.hidden`
  Deferred): the step's target forward reads them as an argument, never as constants of the program."""
  from flax import nnx

  from specjax.train import data as data_lib
  tparams = nnx.state(recipe.target.model) if isinstance(recipe.train.hidden, data_lib.Deferred) else None
  params = recipe.init()
  if place is not None:
    # Evaluation reads recipe.consts too: placed once, for both.
    recipe.consts = place.put(recipe.consts, place.const_shardings(recipe.consts))
    params = place.put(params, place.replicated(params))
    if tparams is not None:
      tparams = place.put(tparams, place.target_shardings(tparams))
  opt_state = opt.init(params)
  if place is not None:
    opt_state = place.put(opt_state, place.replicated(opt_state))
  return params, opt_state, recipe.consts, tparams


def step_function(recipe, opt, place, params, opt_state, tparams=None):
  """(step, put_batch): step(params, opt_state, batch, consts, tparams) -> (params, opt_state, loss, acc),
  jitted; on a mesh with the shardings of `initial_state` in and out and the batch split over "data"
  (put_batch places a recipe's batch so). The step first fills in features on the fly (data.fill)."""
  from flax import nnx

  from specjax.train import data as data_lib
  tgraph = nnx.graphdef(recipe.target.model) if tparams is not None else None

  def step_fn(params, opt_state, batch, consts, tparams):
    batch = data_lib.fill(tgraph, tparams, batch)
    (loss, acc), grads = jax.value_and_grad(recipe.loss, has_aux=True)(params, consts, batch)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  if place is None:
    return jax.jit(step_fn), lambda b: b
  ps, os_, rep = place.replicated(params), place.replicated(opt_state), place.lay.sharding()
  ts = None if tparams is None else place.target_shardings(tparams)
  step = jax.jit(step_fn, in_shardings=(ps, os_, place.batch_sharding(), place.const_shardings(recipe.consts), ts),
                 out_shardings=(ps, os_, rep, rep))
  return step, lambda b: place.put(b, place.batch_sharding())


def fit(target, train, held, c: TrainConfig, out: pathlib.Path, *, mesh=None, stop_after: int | None = None,
        max_seconds: float | None = None, progress: bool = True, log=print):
  """Trains, checkpointing to out/state (orbax) and resuming from it; returns (drafter, summary).
  mesh: a device mesh (specjax.make_mesh) to train data-parallel on (train/placement.py; default: the one
  the target was loaded on, else one device); a run checkpointed on one mesh resumes on any other.
  Features on the fly (`train` made with data.features(..., states=False)): the target's forward runs
  inside each step. stop_after: return after that many steps of this call (what a crash after a
  checkpoint leaves). max_seconds: stop early once this call has trained that long (a lent
  accelerator's time box), checkpointing and evaluating where it stopped; the learning-rate schedule
  stays that of `steps`, so rerunning without it continues the same run.
  Across processes (jax.distributed, a mesh spanning them) every process calls fit with the same data and
  `out` (a directory they share); process 0 writes settings.json and log.jsonl, orbax the checkpoints."""
  import orbax.checkpoint as ocp
  from tqdm import tqdm

  from specjax.parallel import hosts
  from specjax.train.placement import placement

  c = c.resolved()
  main = hosts.main_process()
  progress, log = progress and main, (log if main else (lambda m: None))     # process 0 speaks for all
  out = pathlib.Path(out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  settings = out / "settings.json"
  mine = json.dumps(dataclasses.asdict(c), sort_keys=True)
  if settings.exists() and settings.read_text() != mine:
    raise ValueError(f"{out} holds a training run with other settings ({settings}); use another --out or --overwrite")
  hosts.barrier("specjax-train-settings")      # every process has read settings.json before it is written
  if main:
    settings.write_text(mine)

  place = placement(target.mesh if mesh is None else mesh, target.cfg)
  if place is not None:
    place.check_batch(c.batch)
  recipe = RECIPES[c.drafter](target, train, held, c)
  opt = optimizer(c)
  params, opt_state, consts, tparams = initial_state(recipe, opt, place)
  mngr = ocp.CheckpointManager(out / "state", options=ocp.CheckpointManagerOptions(max_to_keep=2))
  start = 0
  if mngr.latest_step() is not None:
    start = mngr.latest_step()
    # Restored onto the shardings of this run's arrays, whatever mesh wrote the checkpoint.
    abstract = {"params": params, "opt": opt_state}
    restored = mngr.restore(start, args=ocp.args.StandardRestore(abstract))
    params, opt_state = restored["params"], restored["opt"]
    log(f"resumed from step {start} ({out / 'state'})")

  step, put_batch = step_function(recipe, opt, place, params, opt_state, tparams)

  end = c.steps if stop_after is None else min(c.steps, start + stop_after)
  bar = tqdm(range(start, end), initial=start, total=c.steps, disable=not progress, desc=f"train {c.drafter}",
             mininterval=2.0)
  t0, seen, summary, cut = time.perf_counter(), 0, None, None
  log_path = out / "log.jsonl"
  for s in bar:
    if s >= end:
      break
    batch = put_batch(recipe.batch(batch_indices(recipe.units, s, c.batch, c.seed), s))
    params, opt_state, loss, acc = step(params, opt_state, batch, consts, tparams)
    seen += c.batch
    done = s + 1
    # Agreed by every process: none leaves the loop (and its collectives) alone.
    if max_seconds is not None and hosts.any_process(time.perf_counter() - t0 > max_seconds) and done < end:
      log(f"stopping at step {done} of {c.steps}: --max-seconds {max_seconds:g} reached")
      end = cut = done
    if done % 20 == 0 or done == end:
      accs = " ".join(f"{a:.2f}" for a in np.asarray(acc))
      bar.set_postfix_str(f"loss {float(loss):.3f} top1 [{accs}] {seen / (time.perf_counter() - t0):.1f} units/s")
    if done % c.save_every == 0 or done in (c.steps, cut):
      mngr.save(done, args=ocp.args.StandardSave({"params": params, "opt": opt_state}))
      mngr.wait_until_finished()
    if done % c.eval_every == 0 or done in (c.steps, cut):
      summary = recipe.summarize(params)
      row = {"step": done, "loss": float(loss), "top1": summary["top1"], "top5": summary["top5"], "tau": summary["tau"],
             "tau_by_nodes": summary["tau_by_nodes"], "wall_s": time.perf_counter() - t0}
      if main:
        with open(log_path, "a") as f:
          f.write(json.dumps(row) + "\n")
        bar.write(f"step {done}: held-out top1 {['%.3f' % x for x in summary['top1']]} "
                  f"top5 {['%.3f' % x for x in summary['top5']]} tau({summary['tree_nodes']} nodes) {summary['tau']:.3f}")
  mngr.wait_until_finished()
  if summary is None:
    summary = recipe.summarize(params)
  summary.update(vocab_coverage=recipe.coverage, steps_done=end, wall_s_this_run=time.perf_counter() - t0)
  return recipe.drafter(params, summary), summary
