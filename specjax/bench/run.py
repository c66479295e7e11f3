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

import dataclasses
import hashlib
import json
import pathlib
import sys

import numpy as np

from specjax.bench.aggregate import (BASELINE, NEAR_TIE_GAP, OVERALL, aggregate, divergence_gaps, key,
                                     ordered_groups, prompt_records)
from specjax import numerics
from specjax.bench import llamacpp
from specjax.bench.peers import PEERS, HFPeer, PeerError
from specjax.bench.report import loadavg, machine_info, plot_speedup, write_atomic, write_markdown
from specjax.checks import positive_int
from specjax.drafters import registry
from specjax.io import records as records_io
from specjax.io import settings as settings_io
from specjax.io.prompts import Prompt, read_prompts
from specjax.program import Program, Settings, check_tree_budget, encode_prompts

RECORDS = "records.jsonl"


def select(prompts: list[Prompt], *, limit: int | None = None, per_category: int | None = None) -> list[Prompt]:
  """per_category: the first K of each category group (file order); then limit: the first K of those."""
  for name, v in (("limit", limit), ("per_category", per_category)):
    if v is not None:
      positive_int(v, name)
  out = list(prompts)
  if per_category is not None:
    counts: dict[str, int] = {}
    kept = []
    for p in out:
      if counts.get(p.group, 0) < per_category:
        counts[p.group] = counts.get(p.group, 0) + 1
        kept.append(p)
    out = kept
  if limit is not None:
    out = out[:limit]
  return out


def batches(prompts: list[Prompt], batch_size: int) -> list[list[Prompt]]:
  """Consecutive chunks of at most batch_size prompts, never mixing category groups."""
  by_group: dict[str, list[Prompt]] = {}
  for p in prompts:
    by_group.setdefault(p.group, []).append(p)
  out = []
  for g in ordered_groups(by_group):
    ps = by_group[g]
    out += [ps[i:i + batch_size] for i in range(0, len(ps), batch_size)]
  return out


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
  diff = settings_io.differences(old if isinstance(old, dict) else {}, settings)
  if diff:
    raise ValueError(f"{path} holds {method!r} records measured with other settings ({'; '.join(diff)}); "
                     "use another --out directory or delete that file")


# ----------------------------------------------------------------------------- the run

def _load_target(model, dtype, precision):
  import specjax.io as sio
  return sio.load(model, dtype=dtype, precision=precision)


@dataclasses.dataclass
class _Plan:
  """A benchmark's checked arguments: prompts, methods, and each drafter's Settings (its drafter built once)."""
  selected: list[Prompt]
  prompts_total: int
  drafters: list[str]
  peers: list[str]
  methods: list[str]
  settings: dict[str, Settings]         # drafter name -> its settings (the baseline's: plain decoding)
  drafter_options: dict
  lookup: tuple[int, int]               # the peers' prompt lookup: (num_tokens, max_ngram) of pld
  tree_budget: str                      # the drafters' ("fixed" or "auto"); the baseline's is always fixed


def _plan(prompts, *, drafters, limit, per_category, peers, drafter_options, max_new_tokens, temperature, seed,
          chat, tree_budget) -> _Plan:
  """Every argument checked before a model loads."""
  common = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, chat=chat, time_prefill=True)
  Settings.make(**common)
  tree_budget = check_tree_budget(tree_budget)
  all_prompts = read_prompts(prompts) if not isinstance(prompts, list) else list(prompts)
  selected = select(all_prompts, limit=limit, per_category=per_category)
  if not selected:
    raise ValueError("no prompts selected")
  if len({str(p.id) for p in selected}) != len(selected):
    raise ValueError("prompt ids must be unique")
  drafters = [d for d in dict.fromkeys([BASELINE, *drafters])]
  known = registry.names()
  for d in drafters:
    if d.partition(":")[0] not in known:      # "medusa:PATH" names a checkpoint of a known drafter
      raise ValueError(f"unknown drafter {d!r}; choose from {', '.join(known)}")
  peers = list(dict.fromkeys(peers or ()))
  for p in peers:
    if p not in PEERS:
      raise ValueError(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
  if "llamacpp" in peers:
    llamacpp.require()
  drafter_options = {k: dict(v) for k, v in (drafter_options or {}).items()}
  for name in drafter_options:
    if name not in drafters:
      raise ValueError(f"options given for drafter {name!r}, which is not benchmarked")
  # The baseline is plain decoding whatever the tree budget; a drafter with nothing measured fails now.
  settings = {d: Settings.make(drafter=d, drafter_options=drafter_options.get(d), **common,
                               tree_budget=tree_budget if d != BASELINE else "fixed") for d in drafters}
  pld = settings["pld"].drafter if "pld" in settings else registry.make("pld", **drafter_options.get("pld", {}))
  return _Plan(selected, len(all_prompts), drafters, peers, drafters + [m for p in peers for m in PEERS[p]],
               settings, drafter_options, (pld.num_tokens, pld.max_ngram), tree_budget)


def _base_settings(target, dtype, base: Settings) -> dict:
  """The settings every method's records share."""
  out = {"model": str(target.path), "dtype": str(dtype), "max_new_tokens": base.max_new_tokens,
         "temperature": base.temperature, "seed": base.seed, "chat": base.chat}
  if target.mesh is not None:           # only then: records made before meshes existed still resume
    out["mesh"] = dict(target.mesh.shape)
  if target.precision != "exact":       # likewise: records made before the policy existed ran "exact"
    out["precision"] = target.precision
  return out


def _settings_for(plan: _Plan, base: dict, batch_size: int):
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


def _check_records(records, plan: _Plan, settings_for, by_sha: dict, rec_path: pathlib.Path):
  """Records to resume from must have been measured with these settings, on these prompts."""
  for (m, pid), r in list(records.items()):
    if m in plan.methods and pid in by_sha:
      _check_settings(r.get("settings"), settings_for(m), m, rec_path)
      if r.get("prompt_sha") != by_sha[pid]:
        raise ValueError(f"{rec_path} holds a record for prompt {pid!r} whose text differs from the one now "
                         "given; use another --out directory or delete that file")


class _Peers:
  """The peers with work left: run(method, ids, max_new_tokens) -> {token_ids, new_tokens, target_forwards,
  wall_s}, or None once that peer has failed (its error kept in `errors` and shown as it happens)."""

  def __init__(self, busy: list[str], model_name: str, target, plan: _Plan, n_ctx: int, temperature, seed):
    self.runners, self.workers, self.errors = {}, {}, {}
    lookup = plan.lookup
    if set(busy) & set(PEERS["hf"]):
      hf = HFPeer(model_name, eos_ids=target.tokenizer.eos_ids)
      for m in PEERS["hf"]:
        self.runners[m] = lambda x, n, pl=lookup if m == "hf_pld" else None: hf.run(
            x, max_new_tokens=n, temperature=temperature, seed=seed, lookup=pl)
    if set(busy) & set(PEERS["llamacpp"]):
      self.workers = llamacpp.start([m for m in busy if m in PEERS["llamacpp"]], model_name,
                                    eos_ids=target.tokenizer.eos_ids, n_ctx=n_ctx, lookup=lookup,
                                    temperature=temperature, seed=seed, errors=self.errors)
      self.runners.update({m: w.run for m, w in self.workers.items()})

  def run(self, m, x, n):
    if m in self.errors:
      return None
    try:
      return self.runners[m](x, n)
    except PeerError as e:
      self.errors[m] = str(e)
      print(f"specjax bench: {e}; going on without {m}", file=sys.stderr)
      return None

  def close(self):
    for w in self.workers.values():
      w.close()


def _drafter_records(program: Program, settings: Settings, m: str, batch: list[Prompt], ids: dict) -> list[dict]:
  """One generate call over the batch (a partly recorded batch, rare, is measured again whole); its wall
  time shared among the rows in proportion to their new tokens."""
  g = program.generate([ids[str(p.id)] for p in batch], settings)
  total_new = max(sum(g.new_tokens), 1)
  out = []
  for i, p in enumerate(batch):
    share = g.wall_s * g.new_tokens[i] / total_new
    out.append(dict(
        method=m, id=p.id, category=p.category, group=p.group, prompt_tokens=len(ids[str(p.id)]),
        new_tokens=g.new_tokens[i], target_forwards=g.target_forwards[i], tau=g.tau[i],
        wall_s=share, batch_wall_s=g.wall_s, batch_prefill_s=g.prefill_s, batch_size=len(batch),
        compile_s=g.compile_s,
        tokens_per_s=g.new_tokens[i] / share if share > 0 else None,
        accepted_hist=g.accepted_hist[i], token_ids=g.token_ids[i], text=g.texts[i], budget=g.budget))
  return out


def _peer_records(peers: _Peers, tokenizer, m: str, prompts: list[Prompt], ids: dict, max_new_tokens) -> list[dict]:
  out = []
  for p in prompts:
    r = peers.run(m, ids[str(p.id)], max_new_tokens)
    if r is None:
      break
    out.append(dict(
        method=m, id=p.id, category=p.category, group=p.group, prompt_tokens=len(ids[str(p.id)]),
        new_tokens=r["new_tokens"], target_forwards=r["target_forwards"],
        tau=r["new_tokens"] / max(r["target_forwards"], 1), wall_s=r["wall_s"],
        batch_wall_s=r["wall_s"], batch_size=1, compile_s=0.0,
        tokens_per_s=r["new_tokens"] / r["wall_s"] if r["wall_s"] > 0 else None,
        accepted_hist=None, token_ids=r["token_ids"], text=tokenizer.decode(r["token_ids"])))
  return out


def run_bench(prompts, *, out, drafters=("none", "pld", "lookahead"), target=None, model="default",
              dtype="float32", max_new_tokens: int = 256, limit: int | None = None,
              per_category: int | None = None, batch_size: int = 1, temperature: float = 0.0, seed: int = 0,
              chat: bool = True, peers=(), drafter_options: dict | None = None, progress: bool = True,
              command: list[str] | None = None, tree_budget: str | None = None, precision: str = "exact") -> dict:
  """Runs (or resumes) a benchmark and writes OUT/{records.jsonl, results.json, results.md, speedup.png}.

  prompts: a JSONL path or a list of `Prompt`. target: a loaded `specjax.io.Target`, a zero-argument
  callable returning one (called once the prompts and options are validated), or None to load `model`
  in `dtype` and `precision` ("exact" or "fast", specjax/numerics.py; a given target keeps its own). A target
  loaded on a mesh (specjax.load(..., mesh=...)) runs every method sharded. drafter_options: {drafter name:
  {option: value}}. tree_budget: "auto" sizes every drafter's tree to the batch (specjax.budget); the baseline
  is plain decoding either way. Returns the results dict."""
  batch_size = positive_int(batch_size, "batch_size")
  plan = _plan(prompts, drafters=drafters, limit=limit, per_category=per_category, peers=peers,
               drafter_options=drafter_options, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
               chat=chat, tree_budget=tree_budget)
  base = plan.settings[BASELINE]
  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} exists and is not a directory")
  out.mkdir(parents=True, exist_ok=True)

  if target is None:
    target = _load_target(model, dtype, numerics.check(precision))
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

  settings_for = _settings_for(plan, _base_settings(target, dtype, base), batch_size)
  rec_path = out / RECORDS
  records = load_records(rec_path)
  by_sha = {str(p.id): _prompt_sha(ids[str(p.id)]) for p in selected}
  _check_records(records, plan, settings_for, by_sha, rec_path)

  todo = lambda m, batch: [p for p in batch if key(m, p.id) not in records]
  work = batches(selected, batch_size)
  busy = [m for m in plan.methods if m not in plan.drafters and any(todo(m, [p]) for p in selected)]
  peers_ = _Peers(busy, model_name, target, plan, len(longest) + base.max_new_tokens + plan.lookup[0] + 1,
                  base.temperature, base.seed)
  _warm_up(program, plan, peers_, [ids[str(selected[0].id)]] * len(work[0]),
           [m for m in plan.methods if any(todo(m, b) for b in work)])

  load_start = loadavg()
  _measure(program, plan, peers_, work, ids, records, lambda r: dict(settings=settings_for(r["method"]),
           prompt_sha=by_sha[str(r["id"])]), rec_path, progress)
  config = {"command": command, "prompts_file": str(prompts) if not isinstance(prompts, list) else None,
            "prompts_total": plan.prompts_total, "prompts_selected": len(selected), "limit": limit,
            "per_category": per_category, "drafters": plan.drafters, "peers": plan.peers,
            "drafter_options": plan.drafter_options,
            "hf_prompt_lookup": {"prompt_lookup_num_tokens": plan.lookup[0], "max_matching_ngram_size": plan.lookup[1]}
            if plan.peers else None,
            "model": model_name, "dtype": str(dtype), "max_new_tokens": base.max_new_tokens,
            "batch_size": batch_size, "temperature": base.temperature, "seed": base.seed, "chat": bool(chat),
            "tree_budget": plan.tree_budget,
            "mesh": None if target.mesh is None else dict(target.mesh.shape), "precision": target.precision,
            "greedy": base.temperature == 0}
  return _write_results(out, target, records, plan, ids, config, peers_, load_start)


def _measure(program: Program, plan: _Plan, peers: "_Peers", work: list[list[Prompt]], ids: dict, records: dict,
             stamp, rec_path: pathlib.Path, progress: bool) -> None:
  """Every (method, prompt) not in `records` yet, measured and appended to the records file as it is made;
  stamp(record) -> the fields that tie a record to its settings and prompt."""
  todo = lambda m, batch: [p for p in batch if key(m, p.id) not in records]
  selected = [p for b in work for p in b]
  writer = records_io.RecordLog(rec_path)
  from tqdm import tqdm
  done_before = sum(1 for p in selected if all(key(m, p.id) in records for m in plan.methods))
  bar = tqdm(total=len(selected), initial=done_before, unit="prompt", desc="bench", file=sys.stderr,
             disable=not progress, dynamic_ncols=True)
  try:
    for b_index, batch in enumerate(work):
      if not any(todo(m, batch) for m in plan.methods):
        continue
      # Methods interleaved per batch, their order rotated each batch: none is always first after a switch.
      r = b_index % len(plan.methods)
      for m in plan.methods[r:] + plan.methods[:r]:
        if not todo(m, batch):
          continue
        bar.set_postfix_str(m, refresh=True)
        if m in plan.drafters:
          new_recs = _drafter_records(program, plan.settings[m], m, batch, ids)
        else:
          new_recs = _peer_records(peers, program.target.tokenizer, m, todo(m, batch), ids,
                                   plan.settings[BASELINE].max_new_tokens)
        for rec in new_recs:
          rec.update(stamp(rec))
          records[key(m, rec["id"])] = rec
        writer.write(new_recs)
      bar.update(len(batch))
  finally:
    bar.close()
    writer.close()
    peers.close()


def _warm_up(program: Program, plan: _Plan, peers: "_Peers", prompt_ids: list[list[int]], methods: list[str]):
  """One full-length call per method that still has work, so the program (and buffer) the timed calls run is
  the one warmed, not a shorter one; tree_budget="auto" measures its step costs here."""
  for m in methods:
    if m in plan.drafters:
      program.generate(prompt_ids, plan.settings[m].replace(time_prefill=False))
    else:
      peers.run(m, prompt_ids[0], plan.settings[BASELINE].max_new_tokens)


def _write_results(out: pathlib.Path, target, records, plan: _Plan, ids, config: dict, peers: "_Peers",
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
