"""Drafter training: data (self-distillation or teacher forcing, cached), features, the training loop.

    specjax train --drafter medusa --out DIR [--data distill|teacher] [--max-prompts N] [--steps N] [--resume]
                  [--mesh data=D,model=M] [--features disk|online]
                  [--coordinator HOST:PORT --num-processes N --process-id I]     (on each of N processes)
"""
from __future__ import annotations

import pathlib

from specjax.train import data as data_lib


def prepare_data(target, *, mode: str = "distill", max_prompts: int = 2000, heldout_prompts: int = 100,
                 answer_tokens: int = 256, max_prompt_tokens: int = 256, prompts_dir=None, batch_size: int = 16,
                 sequences_file=None, feature_batch_tokens: int = 4096, full: bool = True, capture: tuple = (),
                 features: str = "disk", progress: bool = True):
  """(train Features, held-out Features) for `target`, everything cached under
  $SPECJAX_CACHE/train/<target fingerprint>/ and resumable. `sequences_file`: a file of sequences
  made elsewhere (e.g. answers generated on a GPU by benchmarks/gpu_distill.py), used as the
  sequence cache's starting content. full: features of the prompts' positions too; capture: target
  layers whose residuals are kept too (see data.features). features "online": nothing of the features is
  written; the training positions keep only their small columns (the hidden states are recomputed in each
  training step, data.Deferred) and the held-out ones are kept whole in memory."""
  records = data_lib.training_prompts(prompts_dir)
  from specjax.parallel import hosts
  # Across processes each caches its own (they need not share a disk): process-I-of-N below the cache.
  root = hosts.process_dir(data_lib.cache_root()) / "train" / target.fingerprint
  seq_path = root / f"distill-a{answer_tokens}-p{max_prompt_tokens}.jsonl"
  if sequences_file is not None and not seq_path.exists():
    root.mkdir(parents=True, exist_ok=True)
    seq_path.write_bytes(pathlib.Path(sequences_file).read_bytes())
  out = []
  # Held-out text is always the target's own answers: what the drafter sees when decoding.
  for held, n, m in ((False, max_prompts, mode), (True, heldout_prompts, "distill")):
    tag = f"{m}-a{answer_tokens}-p{max_prompt_tokens}"
    items = data_lib.encode(target, data_lib.select(records, n, heldout=held), max_prompt_tokens=max_prompt_tokens)
    seqs = data_lib.sequences(target, items, root / f"{tag}.jsonl", mode=m, answer_tokens=answer_tokens,
                              batch_size=batch_size, progress=progress)
    if len(seqs) < len(items) and m == "distill":
      raise RuntimeError(f"only {len(seqs)} of {len(items)} sequences were made; rerun to resume")
    if features == "online":
      out.append(data_lib.features(target, seqs, None, batch_tokens=feature_batch_tokens, full=full, capture=capture,
                                   states=held, progress=progress))
      continue
    kind = ("-full" if full else "") + ("-layers" + "-".join(map(str, capture)) if capture else "")
    where = root / f"features{kind}-{tag}"
    # Features made with more captured layers hold everything asked for: reuse them, keeping the columns asked for,
    # unless these exact ones exist (smaller to read, and a superset may still be being written by another run).
    base = "-full" if full else ""
    have = tuple(capture)
    for d in [] if where.exists() else sorted(root.glob(f"features{base}-layers*-{tag}")):
      layers = tuple(int(x) for x in d.name[len(f"features{base}-layers"):-len(f"-{tag}")].split("-"))
      if set(capture) <= set(layers):
        where, have = d, layers
        break
    f = data_lib.features(target, seqs, where / ("heldout" if held else "train"),
                          batch_tokens=feature_batch_tokens, full=full, capture=have, progress=progress)
    if have != tuple(capture):
      f.layers = f.layers[:, [have.index(i) for i in capture]] if capture else None
    out.append(f)
  return tuple(out)


def train_drafter(target, *, drafter: str = "medusa", out, data: str = "distill", max_prompts: int = 2000,
                  heldout_prompts: int = 100, answer_tokens: int = 256, sequences_file=None, prompts_dir=None,
                  gen_batch: int = 16, feature_batch_tokens: int = 4096, overwrite: bool = False, stop_after: int | None = None,
                  max_seconds: float | None = None, features: str = "disk", mesh=None,
                  progress: bool = True, log=print, **config):
  """Trains a drafter for `target` and writes OUT/<drafter>.safetensors (bfloat16, with metadata).

  Rerunning the same call resumes: data, features and the optimiser state are all cached. Every argument
  is checked before any work (specjax.train.checks); `target` may be a zero-argument callable returning
  one, called after those checks (the CLI loads the model only then). features: "disk" (default: computed
  once, cached as .npz) or "online" (the target's forward inside every training step, nothing written;
  drafters trained on whole sequences only). mesh: train data-parallel over it (default: the target's
  mesh, `specjax.load(..., mesh=...)`, on which distillation and features run sharded too). config: TrainConfig fields (steps, batch, lr, heads, draft_vocab, nodes, ...). Returns
  (drafter with its weights, summary of the final held-out evaluation).
  Across processes (jax.distributed started, the target on a mesh spanning them) every process makes the
  same call with the same `out`, a directory they share; each caches its answers and features in its own
  directory (hosts.process_dir), process 0 alone logs and writes the drafter."""
  import dataclasses
  import shutil

  from specjax.io import checkpoint
  from specjax.parallel import hosts
  from specjax.train import checks, loop

  out = checks.arguments(drafter=drafter, out=out, data=data, max_prompts=max_prompts, heldout_prompts=heldout_prompts,
                         answer_tokens=answer_tokens, sequences_file=sequences_file, prompts_dir=prompts_dir,
                         gen_batch=gen_batch, feature_batch_tokens=feature_batch_tokens, overwrite=overwrite,
                         stop_after=stop_after, max_seconds=max_seconds, features=features, progress=progress, log=log,
                         config=config)
  c = loop.TrainConfig(drafter=drafter, **config).resolved()
  main = hosts.main_process()
  progress, log = progress and main, (log if main else (lambda m: None))
  target = checks.against_target(target() if callable(target) else target)
  if overwrite:
    hosts.barrier("specjax-train-checked")      # every process has checked OUT before process 0 empties it
    if main:
      shutil.rmtree(out)
      out.mkdir()
    hosts.barrier("specjax-train-overwritten")
  train, held = prepare_data(target, mode=data, max_prompts=max_prompts, heldout_prompts=heldout_prompts,
                             answer_tokens=answer_tokens, prompts_dir=prompts_dir, batch_size=gen_batch,
                             sequences_file=sequences_file, feature_batch_tokens=feature_batch_tokens,
                             capture=loop.RECIPES[drafter].capture_for(target.cfg, c),
                             full=loop.RECIPES[drafter].full, features=features, progress=progress)
  log(f"data: {len(train)} training positions, {len(held)} held-out ({data}, {max_prompts} prompts, features {features})")
  d, summary = loop.fit(target, train, held, c, out, mesh=mesh, stop_after=stop_after, max_seconds=max_seconds,
                        progress=progress, log=log)
  training = {"data": data, "prompts": max_prompts, "heldout_prompts": heldout_prompts, "answer_tokens": answer_tokens,
              "features": features, "train_positions": len(train), "heldout_positions": len(held), "config": dataclasses.asdict(c),
              "eval": {k: v for k, v in summary.items() if k != "table"}}
  path = out / f"{drafter}.safetensors"
  if main:
    checkpoint.save_drafter(path, d, target, training)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): held-out top1 {[round(x, 3) for x in summary['top1']]}, "
        f"tau {summary['tau']:.3f} at {summary['tree_nodes']} nodes")
  hosts.barrier("specjax-train-written")        # no process returns before the drafter is written
  return d, summary
