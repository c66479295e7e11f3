"""Benchmark harness: the autoregressive baseline and every drafter on the same prompts, in one run.

    run_bench("dev.jsonl", drafters=["pld", "lookahead"], out="bench_out", per_category=5)

For every selected prompt (first turn, chat template applied) and every method, one record goes to
OUT/records.jsonl as soon as it is measured (appended, flushed and fsync'ed), so a crashed or killed
run loses nothing: run the same command again and it skips every (method, prompt) already there.
At the end it writes OUT/results.json, OUT/results.md and OUT/speedup.png.

Methods: "none" (autoregressive, always first: the baseline), the requested drafters, and with
peers=["hf"] Hugging Face transformers greedy decoding ("hf") and its prompt lookup ("hf_pld") on
the same weights and the same prompt token ids; peers=["llamacpp"] llama.cpp on the same GGUF, float32 and
as shipped, plain and prompt lookup (specjax.bench.llamacpp), each method in a worker process: a peer that
fails (a crashed worker) gets no more records and an entry in results["errors"], and the run goes on.

Figures per method and category group (mt_bench, translation, summarization, qa, math_reasoning,
rag, overall), all over the prompts both the method and the baseline have records for:
  tokens_per_s = sum(new tokens) / sum(wall seconds)       (compilation excluded)
  speedup      = tokens_per_s(method) / tokens_per_s(baseline)
  tau          = sum(new tokens) / sum(target forwards)
  identical_to_baseline = {"identical": n, "total": m,     greedy outputs equal token for token
                           "near_tie": k}                  (null when sampling: temperature > 0);
                                                           near_tie: divergences at a top-2 logit gap
                                                           <= NEAR_TIE_GAP (float rounding, DESIGN
                                                           invariant 1); the rest are real mismatches
With batch_size > 1 a batch's wall time is shared among its rows in proportion to their new tokens
(so every row of a batch has the batch's tokens/s), and batches never mix category groups.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np

from specjax import io as sio
from specjax import numerics
from specjax.bench.aggregate import (BASELINE, NEAR_TIE_GAP, OVERALL, aggregate, divergence_gaps, key,
                                     ordered_groups, prompt_records)
from specjax.bench.measure import Peers, measure, warm_up
from specjax.bench.plan import Plan, batches, make_plan
from specjax.bench.report import loadavg, machine_info, plot_speedup, write_atomic, write_markdown
from specjax.checks import positive_int
from specjax.io import records as records_io
from specjax.io import settings as settings_io
from specjax.program import Program, Settings, encode_prompts

RECORDS = "records.jsonl"


# ----------------------------------------------------------------------------- records file

def _prompt_sha(ids: list[int]) -> str:
  return hashlib.sha1(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16]


def load_records(path: pathlib.Path) -> dict[tuple[str, str], dict]:
  """(method, str(id)) -> record; a later record for the same key wins. Unreadable lines (a write cut
  short by a crash) are removed from the file once, with a warning (specjax.io.records)."""
  return {key(r["method"], r["id"]): r
          for r in records_io.load(path, valid=_is_record, label="specjax bench")}


def _is_record(r: dict) -> bool:
  return isinstance(r.get("method"), str) and isinstance(r.get("id"), (str, int))


def _check_settings(old: dict, settings: dict, method: str, path: pathlib.Path):
  # Records made before --repeats existed were timed once.
  diff = settings_io.differences({"repeats": 1, **old} if isinstance(old, dict) else {}, settings)
  if diff:
    raise ValueError(f"{path} holds {method!r} records measured with other settings ({'; '.join(diff)}); "
                     "use another --out directory or delete that file")


# ----------------------------------------------------------------------------- the run
def _base_settings(target, dtype, base: Settings) -> dict:
  """The settings every method's records share."""
  out = {"model": str(target.path), "dtype": str(dtype), "max_new_tokens": base.max_new_tokens,
         "temperature": base.temperature, "seed": base.seed, "chat": base.chat}
  if target.mesh is not None:           # only then: records made before meshes existed still resume
    out["mesh"] = dict(target.mesh.shape)
  if target.precision != "exact":       # likewise: records made before the policy existed ran "exact"
    out["precision"] = target.precision
  return out


def _settings_for(plan: Plan, base: dict, batch_size: int):
  """method -> the settings its records are kept under (a resumed run must match them)."""
  def settings_for(m):
    s = dict(base)
    if m in plan.drafters:
      s.update(batch_size=batch_size, drafter=settings_io.drafter_settings(plan.settings[m].drafter))
      if plan.settings[m].tree_budget == "auto":   # only then: records made before the option existed still resume
        s["tree_budget"] = "auto"
    else:
      s.update(batch_size=1, options={"prompt_lookup": list(plan.lookup)} if m.endswith("_pld") else {})
    return s
  return settings_for


def _check_records(records, plan: Plan, settings_for, by_sha: dict, rec_path: pathlib.Path):
  """Records to resume from must have been measured with these settings, on these prompts."""
  for (m, pid), r in list(records.items()):
    if m in plan.methods and pid in by_sha:
      _check_settings(r.get("settings"), settings_for(m), m, rec_path)
      if r.get("prompt_sha") != by_sha[pid]:
        raise ValueError(f"{rec_path} holds a record for prompt {pid!r} whose text differs from the one now "
                         "given; use another --out directory or delete that file")


def run_bench(prompts, *, out, drafters=("none", "pld", "lookahead"), target=None, model="default",
              dtype="float32", max_new_tokens: int = 256, limit: int | None = None,
              per_category: int | None = None, batch_size: int = 1, temperature: float = 0.0, seed: int = 0,
              chat: bool = True, peers=(), drafter_options: dict | None = None, progress: bool = True,
              command: list[str] | None = None, tree_budget: str | None = None, precision: str = "exact",
              repeats: int = 1) -> dict:
  """Runs (or resumes) a benchmark and writes OUT/{records.jsonl, results.json, results.md, speedup.png}.

  prompts: a JSONL path or a list of `Prompt`. target: a loaded `specjax.io.Target`, a zero-argument
  callable returning one (called once the prompts and options are validated), or None to load `model`
  in `dtype` and `precision` ("exact" or "fast", specjax/numerics.py; a given target keeps its own). A target
  loaded on a mesh (specjax.load(..., mesh=...)) runs every method sharded. drafter_options: {drafter name:
  {option: value}}. tree_budget: "auto" sizes every drafter's tree to the batch (specjax.budget); the baseline
  is plain decoding either way. repeats: each drafter call (the baseline's included) run that many times back
  to back and the fastest kept, for machines whose speed wanders (peers run once). Returns the results dict."""
  batch_size = positive_int(batch_size, "batch_size")
  repeats = positive_int(repeats, "repeats")
  plan = make_plan(prompts, drafters=drafters, limit=limit, per_category=per_category, peers=peers,
                   drafter_options=drafter_options, max_new_tokens=max_new_tokens, temperature=temperature,
                   seed=seed, chat=chat, tree_budget=tree_budget)
  base = plan.settings[BASELINE]
  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} exists and is not a directory")
  out.mkdir(parents=True, exist_ok=True)

  if target is None:
    target = sio.load(model, dtype=dtype, precision=numerics.check(precision))
  elif callable(target):
    target = target()
  model_name = str(target.path)
  if chat:
    target.tokenizer.require_chat_template("pass chat=False (--no-chat)", "--chat-template NAME")
  selected = plan.selected
  ids = dict(zip((str(p.id) for p in selected), encode_prompts(target, [p.text for p in selected], chat)))
  longest = max(ids.values(), key=len)
  program = Program(target)
  for d in plan.drafters:        # context overflows and bad settings surface now, not hours in
    program.prepare([longest], plan.settings[d])

  settings_for = _settings_for(plan, {**_base_settings(target, dtype, base), "repeats": repeats}, batch_size)
  rec_path = out / RECORDS
  records = load_records(rec_path)
  by_sha = {str(p.id): _prompt_sha(ids[str(p.id)]) for p in selected}
  _check_records(records, plan, settings_for, by_sha, rec_path)

  todo = lambda m, batch: [p for p in batch if key(m, p.id) not in records]
  work = batches(selected, batch_size)
  busy = [m for m in plan.methods if m not in plan.drafters and any(todo(m, [p]) for p in selected)]
  peers_ = Peers(busy, model_name, target, plan, len(longest) + base.max_new_tokens + plan.lookup[0] + 1,
                 base.temperature, base.seed)
  warm_up(program, plan, peers_, [ids[str(selected[0].id)]] * len(work[0]),
          [m for m in plan.methods if any(todo(m, b) for b in work)])

  load_start = loadavg()
  measure(program, plan, peers_, work, ids, records, lambda r: dict(settings=settings_for(r["method"]),
          prompt_sha=by_sha[str(r["id"])]), rec_path, progress, repeats)
  config = {"command": command, "prompts_file": str(prompts) if not isinstance(prompts, list) else None,
            "prompts_total": plan.prompts_total, "prompts_selected": len(selected), "limit": limit,
            "per_category": per_category, "drafters": plan.drafters, "peers": plan.peers,
            "drafter_options": plan.drafter_options,
            "hf_prompt_lookup": {"prompt_lookup_num_tokens": plan.lookup[0], "max_matching_ngram_size": plan.lookup[1]}
            if plan.peers else None,
            "model": model_name, "dtype": str(dtype), "max_new_tokens": base.max_new_tokens,
            "batch_size": batch_size, "repeats": repeats, "temperature": base.temperature, "seed": base.seed,
            "chat": bool(chat),
            "tree_budget": plan.tree_budget,
            "mesh": None if target.mesh is None else dict(target.mesh.shape), "precision": target.precision,
            "greedy": base.temperature == 0}
  return _write_results(out, target, records, plan, ids, config, peers_, load_start)


def _write_results(out: pathlib.Path, target, records, plan: Plan, ids, config: dict, peers: Peers,
                   load_start) -> dict:
  """OUT/results.json, results.md and speedup.png from every record; returns the results dict."""
  greedy, selected, methods = config["greedy"], plan.selected, plan.methods
  gaps = divergence_gaps(target, records, selected, methods, ids) if greedy else {}
  results = {
      "baseline": BASELINE,
      "methods": methods,
      "groups": ordered_groups(p.group for p in selected) + [OVERALL],
      "machine": {**machine_info(with_torch="hf" in plan.peers), "loadavg_start": load_start, "loadavg_end": loadavg(),
                  **({"llamacpp": next(iter(peers.workers.values())).info} if peers.workers else {})},
      "config": config,
      "near_tie_gap": NEAR_TIE_GAP,
      "errors": peers.errors,
      "results": aggregate(records, selected, methods, greedy=greedy, gaps=gaps),
      "records": prompt_records(records, selected, methods, greedy=greedy, gaps=gaps),
  }
  write_atomic(out / "results.json", json.dumps(results, indent=1))
  write_markdown(out / "results.md", results)
  plot_speedup(out / "speedup.png", results)
  return results
