"""Batch jobs: every prompt of a JSONL file answered once, crash-safe and resumable.

    run_batch("prompts.jsonl", "results.jsonl", drafter="pld", batch_size=8, max_new_tokens=256)

Files beside OUT (results.jsonl): results.errors.jsonl (malformed rows: line number and reason) and
results.settings.json (the resolved settings of the job).

Identity: each input row has a key that no edit of other rows changes: its id, or else the sha256 of its
prompt and its count among identical prompts (specjax.io.prompts). Each record carries the key as `id`, the
prompt's `prompt_sha256` and its `line`, renumbered when a rerun finds the input edited (`line` null: the
row is no longer in the input). A rerun answers exactly the rows with no record yet, and refuses, before
any model loads, a results file holding an answer under a key whose prompt is now another (an explicit id
given to another prompt). The errors file is rewritten by every run: it lists the input's current bad rows.

Crash safety: answers are appended batch by batch, flushed and fsync'ed (specjax.io.records), and a
record is written only for a key that is not in the file yet. Killed at any moment (kill -9), the
same command resumes: it drops a torn last line, skips answered ids and runs the rest, so the final
file holds every good input exactly once. Batches are fixed by the input (consecutive good rows), and
a batch cut by a crash is generated again whole, with only its missing rows written: a resumed job's
answers equal an uninterrupted job's token for token (same batch shapes, same program).
Rerunning with other settings on the same OUT is refused unless overwrite=True.

Multi-host (jax.distributed started, N processes): process p answers the input lines with
(line - 1) % N == p, on its own devices only (a --mesh is built from its local devices), into its own
shard OUT.p{p}of{N}.jsonl with its own errors and settings files, crash-safe as above; no collective runs
during the job, so one slow process delays no other. At the end the processes meet at one barrier and
process 0 merges every shard it can see (a shared filesystem) into OUT, in input order, atomically. The
shards stay the record of truth: a rerun with the same N resumes each shard and merges again; `read_results`
reads OUT or the shards of a job whose processes wrote to different machines.
"""
from __future__ import annotations

import pathlib
import re
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from specjax.checks import positive_int
from specjax.io import records as records_io
from specjax.io import settings as settings_io
from specjax.io.prompts import Prompt, count_lines, stream_prompts
from specjax.program import Program, Settings, check_fits, encode_prompts


def _has_id(r: dict) -> bool:
  """A record a results file may hold: one with a str or int id (its row's key)."""
  return isinstance(r.get("id"), (str, int))


def side_paths(out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """(errors file, settings file) for an output file: results.jsonl -> results.errors.jsonl,
  results.settings.json."""
  return _beside(out, ".errors.jsonl"), _beside(out, ".settings.json")


def _beside(out, suffix: str) -> pathlib.Path:
  """results.jsonl -> results<suffix> in the same folder."""
  out = pathlib.Path(out)
  return out.with_name((out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.name) + suffix)


def shard_path(out: pathlib.Path, process: int, processes: int) -> pathlib.Path:
  """Process `process`'s own output of an N-process job: results.jsonl -> results.p0of2.jsonl."""
  return _beside(out, f".p{process}of{processes}.jsonl")


def _other_shards(out: pathlib.Path, processes: int) -> list[pathlib.Path]:
  """Shards (and their side files) of jobs on OUT run with another number of processes."""
  stem = _beside(out, "").name
  own = {shard_path(out, p, processes).name for p in range(processes)} if processes > 1 else set()
  shard = re.compile(re.escape(stem) + r"\.p\d+of\d+\.jsonl")
  found = [p for p in pathlib.Path(out).parent.glob(f"{stem}.p*of*.jsonl") if shard.fullmatch(p.name) and p.name not in own]
  return [q for p in found for q in (p, *side_paths(p))]


def read_results(out, processes: int | None = None) -> list[dict]:
  """Every answer of a job in input order: OUT's records, or (processes=N) the union of the N shards of a
  multi-host job, each id once."""
  out = pathlib.Path(out)
  paths = [out] if processes is None else [shard_path(out, p, processes) for p in range(processes)]
  recs = {}
  for path in paths:
    for r in records_io.load(path, valid=_has_id, label="specjax batch"):
      recs.setdefault(str(r["id"]), r)
  return sorted(recs.values(), key=_in_order)


def _in_order(r: dict) -> tuple:
  """Records by input line; those of rows no longer in the input (line null) last."""
  return (r.get("line") is None, r.get("line") or 0)


def _input_rows(inp: pathlib.Path) -> dict[str, tuple[int, str]]:
  """key -> (line, prompt sha256) of every good row of the input (a pass that loads no model)."""
  return {str(pr.id): (lineno, pr.sha256) for lineno, pr in stream_prompts(inp) if isinstance(pr, Prompt)}


def _check_answers_match(out: pathlib.Path, inp: pathlib.Path, done: dict[str, dict], rows: dict) -> None:
  """Refuses a results file with an answer under a key whose row now holds another prompt (or written
  before answers named their prompt): resuming would pair that answer with the wrong prompt."""
  for key, r in done.items():
    if key not in rows:
      continue                              # a deleted row's answer: kept, it still names its prompt
    line, sha = rows[key]
    if "prompt_sha256" not in r:
      raise ValueError(f"{out} was written by an older specjax (its answers do not record prompt_sha256), so "
                       f"they cannot be matched to {inp}; pass --overwrite to start again")
    if r["prompt_sha256"] != sha:
      raise ValueError(f"{out} does not match {inp}: its answer for id {r['id']!r} is for another prompt than line "
                       f"{line} holds now (prompt_sha256 {r['prompt_sha256'][:12]}... there, {sha[:12]}... now); "
                       "restore that line, give it a new id, or pass --overwrite to start again")


def _renumber(out: pathlib.Path, rows: dict) -> None:
  """Rewrites OUT (atomically) when the input was edited since its records were written, so each record's
  `line` is its row's line now (null: no longer in the input), in input order."""
  recs = records_io.load(out, valid=_has_id, label="specjax batch")
  now = sorted((dict(r, line=rows.get(str(r["id"]), (None,))[0]) for r in recs), key=_in_order)
  if now != recs:
    records_io.write_all(out, now)


def _merge_shards(out: pathlib.Path, processes: int) -> bool:
  """Process 0, after the barrier: OUT (and its errors file) rewritten atomically from every shard, when all
  are visible here. Returns whether it merged."""
  shards = [shard_path(out, p, processes) for p in range(processes)]
  if not all(s.exists() for s in shards):
    return False
  errors = [e for s in shards for e in records_io.load(side_paths(s)[0], label="specjax batch")]
  for path, recs in ((out, read_results(out, processes)), (side_paths(out)[0], sorted(errors, key=lambda e: e["line"]))):
    records_io.write_all(path, recs)
  return True


def answer_record(g, i: int, pid) -> dict:
  """Row i of a Generation as the JSON record `generate --json` prints and a batch job writes."""
  n, fw = g.new_tokens[i], g.target_forwards[i]
  return {"id": pid, "text": g.texts[i], "token_ids": g.token_ids[i], "new_tokens": n, "target_forwards": fw,
          "tau": n / fw if fw else 0.0, "wall_s": g.wall_s, "tokens_per_s": n / g.wall_s if g.wall_s > 0 else 0.0,
          **({} if g.prefill_s is None else {"prefill_s": g.prefill_s, "decode_tokens_per_s": n / (g.wall_s - g.prefill_s)}),
          "drafter": g.drafter, "budget": g.budget}


def _own_output(out: pathlib.Path, process: int, processes: int, overwrite: bool) -> pathlib.Path:
  """This process's output file: OUT, or its shard of a multi-host job. Another layout's files on OUT
  (shards of another process count; a one-process job's output under a multi-host one) are refused, or
  removed by process 0 with overwrite; with overwrite, this process's own files are removed too."""
  foreign = _other_shards(out, processes) + ([out, *side_paths(out)] if processes > 1 else [])
  if overwrite and process == 0:
    for p in foreign:
      p.unlink(missing_ok=True)
  elif not overwrite and _other_shards(out, processes):
    raise ValueError(f"{out} has shards of a job with another number of processes; rerun with that many "
                     "processes, or pass --overwrite")
  elif not overwrite and processes > 1 and side_paths(out)[1].exists():
    raise ValueError(f"{out} was written by a one-process job; resume it with one process, or pass --overwrite")
  if processes > 1:
    out = shard_path(out, process, processes)
  if overwrite:
    for p in (out, *side_paths(out)):
      p.unlink(missing_ok=True)
  return out


def _job_settings(target, s: Settings, batch_size: int, processes: int) -> dict:
  """What a job's results depend on, kept beside OUT: a rerun with other settings is refused."""
  settings = {"model": str(target.path), "fingerprint": target.fingerprint, "dtype": np.dtype(target.model.dtype).name,
              "max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
              "seed": s.seed, "acceptance": s.acceptance, "chat": s.chat, "allow_special": s.allow_special,
              "batch_size": batch_size, "drafter": settings_io.drafter_settings(s.drafter)}
  if processes > 1:
    settings["processes"] = processes
  if s.tree_budget == "auto":         # only then: files written before the option existed still resume
    settings["tree_budget"] = s.tree_budget
  return settings


def _keep_settings(out: pathlib.Path, settings: dict, resuming: bool) -> None:
  """Writes the job's settings beside OUT, or refuses to resume answers made with other (or unknown) ones."""
  errors_path, settings_path = side_paths(out)
  old = settings_io.read(settings_path)
  if old is None and (resuming or errors_path.exists()):
    raise ValueError(f"{out} holds answers but {settings_path.name} is missing, so they cannot be checked "
                     "against these settings; pass --overwrite to start again")
  if old is not None:
    diff = settings_io.differences(old, settings)
    if diff:
      raise ValueError(f"{out} was made with other settings ({'; '.join(diff)}); rerun with the same settings "
                       "to resume, or pass --overwrite to start again")
  else:
    settings_io.write(settings_path, settings)


def run_batch(inp, out, *, target, drafter="none", drafter_options: dict | None = None, batch_size: int = 8,
              max_new_tokens: int = 128, temperature: float = 0.0, top_k=None, top_p=None, seed: int = 0,
              acceptance: str | None = None, chat: bool = True, allow_special: bool = False, mesh=None,
              overwrite: bool = False, progress: bool = True, tree_budget: str | None = None) -> dict:
  """Runs (or resumes) a batch job; returns {"written", "skipped", "errors", "out", "errors_file"}.

  target: a loaded Target or a zero-argument callable returning one (called after every check that
  needs no model)."""
  process, processes = jax.process_index(), jax.process_count()
  if str(inp) == "-":
    raise ValueError("a batch job reads its input twice when resumed: give a file, not standard input")
  inp, out = pathlib.Path(inp), pathlib.Path(out)
  if not inp.exists():
    raise FileNotFoundError(f"prompts file not found: {inp}")
  if inp.is_dir():
    raise ValueError(f"{inp} is a directory, not a JSONL prompts file")
  if out.is_dir():
    raise ValueError(f"--out {out} is a directory; give a file such as {out / 'results.jsonl'}")
  if out.resolve() == inp.resolve():
    raise ValueError("--out must not be the input file")
  batch_size = positive_int(batch_size, "batch_size")
  s = Settings.make(drafter=drafter, drafter_options=drafter_options, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, acceptance=acceptance, chat=chat,
                    allow_special=allow_special, tree_budget=tree_budget)
  final = out
  out = _own_output(out, process, processes, overwrite)
  errors_path = side_paths(out)[0]

  rows = _input_rows(inp)
  done = {str(r["id"]): r for r in records_io.load(out, valid=_has_id, label="specjax batch")}
  _check_answers_match(out, inp, done, rows)

  if callable(target):
    target = target()
  program = Program(target, mesh)
  if processes > 1 and program.mesh is not None and any(x.process_index != process for x in program.mesh.devices.flat):
    raise ValueError("in a multi-host batch job each process runs on its own devices: build its mesh from "
                     "jax.local_devices()")
  if s.chat:
    target.tokenizer.require_chat_template("pass --no-chat", "--chat-template NAME")
  s.drafter.check_target(target)
  settings = _job_settings(target, s, batch_size, processes)
  _keep_settings(out, settings, resuming=bool(done))
  records_io.write_all(errors_path, [])     # every run lists the input's bad rows anew

  mine = (count_lines(inp) + processes - 1 - process) // processes      # lines with (line - 1) % N == process
  bar = tqdm(total=mine, unit="rec", desc="batch", file=sys.stderr, disable=not progress, dynamic_ncols=True)
  answers, errors = records_io.RecordLog(out), records_io.RecordLog(errors_path)
  stats = {"written": 0, "skipped": 0, "errors": 0, "new_tokens": 0, "wall_s": 0.0}

  def error(lineno, pid, reason):
    stats["errors"] += 1
    errors.write([{"line": lineno, "id": pid, "error": reason}])
    bar.update(1)

  def flush(batch: list[tuple[int, Prompt, list[int]]]):
    todo = [b for b in batch if str(b[1].id) not in done]
    stats["skipped"] += len(batch) - len(todo)
    if todo:   # a batch cut by a crash runs again whole: the same shapes give the same tokens
      g = program.generate([ids for _, _, ids in batch], s)
      recs = [dict(answer_record(g, i, p.id), line=lineno, prompt_sha256=p.sha256)
              for i, (lineno, p, _) in enumerate(batch) if str(p.id) not in done]
      answers.write(recs)
      done.update((str(r["id"]), r) for r in recs)
      stats["written"] += len(recs)
      stats["new_tokens"] += sum(r["new_tokens"] for r in recs)
      stats["wall_s"] += g.wall_s
      bar.set_postfix_str(f"{stats['new_tokens'] / max(stats['wall_s'], 1e-9):.1f} tok/s", refresh=False)
    bar.update(len(batch))

  t0 = time.perf_counter()
  try:
    batch: list = []
    for lineno, item in stream_prompts(inp):
      if (lineno - 1) % processes != process:     # another process's line
        continue
      if isinstance(item, ValueError):
        error(lineno, None, str(item))
        continue
      try:
        ids = encode_prompts(target, [item.text], s.chat, s.allow_special)[0]
        check_fits(target, len(ids), s.max_new_tokens, s.drafter)
      except ValueError as e:
        error(lineno, item.id, f"{inp}:{lineno}: {e}")
        continue
      batch.append((lineno, item, ids))
      if len(batch) == batch_size:
        flush(batch)
        batch = []
    if batch:
      flush(batch)
  finally:
    bar.close()
    answers.close()
    errors.close()
  _renumber(out, rows)
  merged = False
  if processes > 1:
    multihost_utils.sync_global_devices("specjax batch: every shard written")
    merged = process == 0 and _merge_shards(final, processes)
  return {"written": stats["written"], "skipped": stats["skipped"], "errors": stats["errors"],
          "new_tokens": stats["new_tokens"], "wall_s": time.perf_counter() - t0, "out": str(out),
          "errors_file": str(errors_path), "merged": str(final) if merged else None}
