"""The drafter training loop: optax AdamW with warm-up + cosine decay and gradient clipping, a jitted
step, orbax checkpoints every `save_every` steps, exact resume (same optimiser state, same data
order: batch s is a function of the seed and s alone), held-out evaluation with the expected
acceptance length of the tree the drafter will use. Medusa's recipe (single positions) is here; the
whole-sequence recipes (Clover, EAGLE) are in train/sequence.py.

Training runs in float32: the heads are small (a few M parameters), the CPU's float32 matmuls are
several times faster than its bfloat16 ones (DESIGN.md), and the shipped checkpoint is cast to
bfloat16 once at the end.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from specjax import numerics
from specjax.engine import tree as tree_lib
from specjax.train.data import draft_vocab
from specjax.train.sequence import CloverRecipe, Eagle3Recipe, EagleRecipe

KMAX = 10   # ranks measured per head (a tree never uses more siblings than this)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Training settings. Fields left None take the drafter recipe's defaults (`Recipe.defaults`)."""
  drafter: str = "medusa"
  steps: int = 2000
  batch: int | None = None    # Medusa: positions per step (256); Clover, EAGLE: sequences per step (4)
  lr: float = 1e-3
  warmup: int = 100
  weight_decay: float = 0.0
  clip: float | None = None   # gradient clipping: by global norm (Medusa, 1.0) or by value (Clover, 0.5)
  b1: float = 0.9
  b2: float | None = None     # Medusa 0.999; Clover 0.95 (the public Clover-2 trainer)
  seed: int = 0
  eval_every: int = 500
  save_every: int = 250
  eval_positions: int = 8192
  heads: int = 4              # Medusa, Clover: heads (tree depth); EAGLE-3: training-time-test steps
  layers: int = 1             # Medusa: ResBlocks per head; Clover: augmenting decoder layers
  draft_vocab: int = 4096     # 0: the full vocabulary (4096 measured best, BENCHMARKS.md)
  exit_layer: int = 0         # early-exit: the adapter reads the residual after the target's first K layers
  nodes: int = 12             # tree budget used for the tau estimate and stored in the checkpoint

  def resolved(self) -> "TrainConfig":
    d = RECIPES[self.drafter].defaults
    return dataclasses.replace(self, **{k: v for k, v in d.items() if getattr(self, k) is None})


def _schedule(c: TrainConfig):
  return optax.warmup_cosine_decay_schedule(0.0, c.lr, max(c.warmup, 1), max(c.steps, c.warmup + 1), c.lr * 0.05)


def optimizer(c: TrainConfig):
  clip = optax.clip(c.clip) if RECIPES[c.drafter].clip_by == "value" else optax.clip_by_global_norm(c.clip)
  return optax.chain(clip, optax.adamw(_schedule(c), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay))


def batch_indices(n: int, step: int, batch: int, seed: int) -> np.ndarray:
  """Units of batch `step`: epochs of a seeded permutation, so a resumed run sees the same data."""
  per_epoch = max(n // batch, 1)
  epoch, i = divmod(step, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[i * batch:(i + 1) * batch]


class MedusaRecipe:
  """What the loop needs from a drafter: units to sample batches from, a batch, initial weights, the
  loss, a held-out summary (with the exact tau of the tree it will use) and the drafter itself."""
  defaults = dict(batch=256, clip=1.0, b2=0.999)
  clip_by = "norm"

  @staticmethod
  def capture_for(cfg, c: TrainConfig | None = None) -> tuple:
    """Target layers whose residuals the features must keep (none: the last hidden state only)."""
    return ()

  def __init__(self, target, train, held, c: TrainConfig):
    from specjax.drafters import medusa
    self.m, self.c, self.target, self.train, self.held = medusa, c, target, train, held
    model = target.model
    self.vocab, self.coverage, self.index = draft_vocab(train, target.cfg.vocab, c.draft_vocab)
    self.consts = dict(norm_w=model.final_norm[...],
                       head_w=jnp.asarray(model.head_weight(None if self.vocab is None else jnp.asarray(self.vocab)),
                                          jnp.float32))
    self.eps = target.cfg.norm_eps
    self.lab_train, self.lab_held = self.labels(train), self.labels(held)
    self.pos_train = np.flatnonzero((self.lab_train[:, 0] >= 0) & (train.pos >= 0))     # answer positions only
    pos_held = np.flatnonzero((self.lab_held[:, 0] >= 0) & (held.pos >= 0))
    if len(self.pos_train) < c.batch:
      raise ValueError(f"only {len(self.pos_train)} training positions, fewer than a batch of {c.batch}")
    rng = np.random.default_rng(c.seed)
    self.ev_held = np.sort(rng.choice(pos_held, min(len(pos_held), c.eval_positions), replace=False))
    self.ev_train = np.sort(rng.choice(self.pos_train, min(len(self.pos_train), c.eval_positions), replace=False))
    self.units = len(self.pos_train)
    self._rank_fn = jax.jit(self.ranks)           # one compile for every evaluation of the run

  def labels(self, feat):
    lab = self.m.labels(feat, self.c.heads)
    return np.where(lab >= 0, self.index[np.maximum(lab, 0)], -1)

  def batch(self, units, step):
    idx = self.pos_train[units]
    return {"h": jnp.asarray(np.asarray(self.train.hidden[idx], np.float32)), "lab": jnp.asarray(self.lab_train[idx])}

  def init(self):
    H = self.target.cfg.hidden
    return {"w": jnp.zeros((self.c.heads, self.c.layers, H, H)), "b": jnp.zeros((self.c.heads, self.c.layers, H))}

  def loss(self, p, consts, batch):
    return self.m.loss_fn(p, consts["norm_w"], consts["head_w"], batch["h"], batch["lab"], eps=self.eps)

  def ranks(self, p, consts, h, lab):
    return self.m.ranks(p, consts["norm_w"], consts["head_w"], h, lab, eps=self.eps, kmax=KMAX)

  def summarize(self, p):
    return summarize(evaluate(self._rank_fn, p, self.consts, self.held, self.lab_held, self.ev_held),
                     evaluate(self._rank_fn, p, self.consts, self.train, self.lab_train, self.ev_train), self.c.nodes)

  def drafter(self, p, summary):
    from flax import nnx
    c = self.c
    d = self.m.Medusa(heads=c.heads, layers=c.layers, hidden=self.target.cfg.hidden,
                      draft_vocab=0 if self.vocab is None else len(self.vocab), nodes=c.nodes,
                      accuracy=tuple(tuple(round(float(x), 4) for x in row) for row in summary["table"]))
    module = self.m.MedusaHeads(hidden=d.hidden, heads=d.heads, layers=d.layers, vocab=self.vocab)
    module.w[...] = jnp.asarray(p["w"], jnp.float32)
    module.b[...] = jnp.asarray(p["b"], jnp.float32)
    return dataclasses.replace(d, params=nnx.state(module))


class EarlyExitRecipe(MedusaRecipe):
  """The early-exit adapter (drafters/early_exit.py): one Medusa head of `layers` ResBlocks on the
  final-normed residual after the target's first `exit_layer` layers, predicting the target's next
  token at the same position, trained with soft cross-entropy against the target's top-8
  (renormalised over the draft vocabulary). Held-out top-1 = how often the draft's token is the
  target's: the chain's per-token acceptance under greedy decoding."""
  defaults = dict(batch=256, clip=1.0, b2=0.999)
  full = False        # answer positions only: the adapter reads one position at a time

  @staticmethod
  def capture_for(cfg, c: TrainConfig) -> tuple:
    if not 1 <= c.exit_layer < cfg.layers:
      raise ValueError(f"early-exit: --exit-layer must be in [1, {cfg.layers - 1}] for this target, got {c.exit_layer}")
    return (c.exit_layer - 1,)

  def __init__(self, target, train, held, c: TrainConfig):
    # The adapter's input is the captured residual: Medusa's machinery then runs unchanged on `hidden`.
    train, held = (dataclasses.replace(f, hidden=f.layers[:, 0], layers=None) for f in (train, held))
    super().__init__(target, train, held, dataclasses.replace(c, heads=1))

  def labels(self, feat):
    """[N, 1] the target's own next token at each position (draft-vocabulary index, -1 outside)."""
    return self.index[feat.top_ids[:, :1]]

  def batch(self, units, step):
    idx = self.pos_train[units]
    ids = self.index[self.train.top_ids[idx]]                                   # [b, 8], -1 outside the vocabulary
    p = np.where(ids >= 0, self.train.top_p[idx].astype(np.float32), 0)
    return {"h": jnp.asarray(np.asarray(self.train.hidden[idx], np.float32)), "ids": jnp.asarray(np.maximum(ids, 0)),
            "p": jnp.asarray(p / np.maximum(p.sum(1, keepdims=True), 1e-9)), "lab": jnp.asarray(self.lab_train[idx])}

  def loss(self, p, consts, batch):
    from specjax.models.llama import rms_norm
    hn = rms_norm(batch["h"], consts["norm_w"], self.eps)
    logits = numerics.dot(self.m.apply(p, hn)[:, 0], consts["head_w"], preferred_element_type=jnp.float32)   # [b, N]
    logp = jax.nn.log_softmax(logits, -1)
    loss = -(jnp.take_along_axis(logp, batch["ids"], -1) * batch["p"]).sum(-1).mean()
    acc = (jnp.argmax(logits, -1) == batch["lab"][:, 0]).mean()
    return loss, acc[None]

  def drafter(self, p, summary):
    from specjax.drafters.early_exit import EarlyExit
    c = self.c
    d = EarlyExit(exit_layer=c.exit_layer, layers=c.layers, hidden=self.target.cfg.hidden,
                  draft_vocab=0 if self.vocab is None else len(self.vocab))
    return d.with_weights(p, self.vocab)


RECIPES = {"medusa": MedusaRecipe, "clover": CloverRecipe, "clover2": CloverRecipe, "eagle": EagleRecipe,
           "eagle3": Eagle3Recipe, "early-exit": EarlyExitRecipe}


def evaluate(fn, p, consts, feat, lab, positions: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
  """[n, K] label ranks (KMAX = absent) at the given positions; fn: the recipe's jitted `ranks`."""
  out = []
  for s in range(0, len(positions), chunk):
    idx = positions[s:s + chunk]
    pad = chunk - len(idx)
    idx_p = np.pad(idx, (0, pad))
    r = np.asarray(fn(p, consts, jnp.asarray(np.asarray(feat.hidden[idx_p], np.float32)), jnp.asarray(lab[idx_p])))
    out.append(r[:len(idx)])
  return np.concatenate(out) if out else np.zeros((0, lab.shape[1]), np.int64)


def summarize(held_ranks: np.ndarray, train_ranks: np.ndarray, nodes: int) -> dict:
  """Per-head top-1 / top-5 accuracy on held-out positions, the acceptance table (from training
  positions) and the exact tau of the tree grown from it, on held-out positions."""
  table = tree_lib.acceptance_table(train_ranks, KMAX)
  shape = tree_lib.grow(table, nodes)
  acc_len = tree_lib.accepted_lengths(held_ranks, shape)
  return {"top1": [float(x) for x in (held_ranks == 0).mean(0)],
          "top5": [float(x) for x in (held_ranks < 5).mean(0)],
          "tau": 1.0 + float(acc_len.mean()), "table": table.tolist(), "tree_nodes": nodes,
          "tau_by_nodes": {n: 1.0 + float(tree_lib.accepted_lengths(held_ranks, tree_lib.grow(table, n)).mean())
                           for n in (4, 8, 12, 16, 24, 32)}}


def fit(target, train, held, c: TrainConfig, out: pathlib.Path, *, stop_after: int | None = None,
        max_seconds: float | None = None, progress: bool = True, log=print):
  """Trains, checkpointing to out/state (orbax) and resuming from it; returns (drafter, summary).
  stop_after: return after that many steps of this call (what a crash after a checkpoint leaves).
  max_seconds: stop early once this call has trained that long (a lent accelerator's time box),
  checkpointing and evaluating where it stopped; the learning-rate schedule stays that of `steps`,
  so rerunning without it continues the same run."""
  import orbax.checkpoint as ocp
  from tqdm import tqdm

  c = c.resolved()
  out = pathlib.Path(out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  settings = out / "settings.json"
  mine = json.dumps(dataclasses.asdict(c), sort_keys=True)
  if settings.exists() and settings.read_text() != mine:
    raise ValueError(f"{out} holds a training run with other settings ({settings}); use another --out or --overwrite")
  settings.write_text(mine)

  recipe = RECIPES[c.drafter](target, train, held, c)
  opt = optimizer(c)
  consts = recipe.consts
  params = recipe.init()
  opt_state = opt.init(params)
  mngr = ocp.CheckpointManager(out / "state", options=ocp.CheckpointManagerOptions(max_to_keep=2))
  start = 0
  if mngr.latest_step() is not None:
    start = mngr.latest_step()
    abstract = {"params": params, "opt": opt_state}
    restored = mngr.restore(start, args=ocp.args.StandardRestore(abstract))
    params, opt_state = restored["params"], restored["opt"]
    log(f"resumed from step {start} ({out / 'state'})")

  @jax.jit
  def step_fn(params, opt_state, batch):
    (loss, acc), grads = jax.value_and_grad(recipe.loss, has_aux=True)(params, consts, batch)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  end = c.steps if stop_after is None else min(c.steps, start + stop_after)
  bar = tqdm(range(start, end), initial=start, total=c.steps, disable=not progress, desc=f"train {c.drafter}",
             mininterval=2.0)
  t0, seen, summary, cut = time.perf_counter(), 0, None, None
  log_path = out / "log.jsonl"
  for s in bar:
    if s >= end:
      break
    params, opt_state, loss, acc = step_fn(params, opt_state, recipe.batch(batch_indices(recipe.units, s, c.batch, c.seed), s))
    seen += c.batch
    done = s + 1
    if max_seconds is not None and time.perf_counter() - t0 > max_seconds and done < end:
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
      with open(log_path, "a") as f:
        f.write(json.dumps(row) + "\n")
      bar.write(f"step {done}: held-out top1 {['%.3f' % x for x in summary['top1']]} "
                f"top5 {['%.3f' % x for x in summary['top5']]} tau({summary['tree_nodes']} nodes) {summary['tau']:.3f}")
  mngr.wait_until_finished()
  if summary is None:
    summary = recipe.summarize(params)
  summary.update(vocab_coverage=recipe.coverage, steps_done=end, wall_s_this_run=time.perf_counter() - t0)
  return recipe.drafter(params, summary), summary
