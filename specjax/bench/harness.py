"""Benchmark harness: the autoregressive baseline and every drafter on the same prompts, in one run.

    run_bench("dev.jsonl", drafters=["pld", "lookahead"], out="bench_out", per_category=5)

For every selected prompt (first turn, chat template applied) and every method, one record goes to
OUT/records.jsonl as soon as it is measured (appended, flushed and fsync'ed), so a crashed or killed
run loses nothing: run the same command again and it skips every (method, prompt) already there.
At the end it writes OUT/results.json, OUT/results.md and OUT/speedup.png.

Methods: "none" (autoregressive, always first: the baseline), the requested drafters, and with
peers=["hf"] Hugging Face transformers greedy decoding ("hf") and its prompt lookup ("hf_pld") on
the same weights and the same prompt token ids.

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

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

from specjax.io import records as records_io
from specjax.io.prompts import MT_BENCH, Prompt, group_of, parse_prompt_row, read_prompts  # noqa: F401 (re-exported)

GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
OVERALL = "overall"
BASELINE = "none"
PEERS = {"hf": ("hf", "hf_pld")}
WARMUP_TOKENS = 8
RECORDS = "records.jsonl"
# A greedy divergence whose top-2 logit gap (at the first differing token) is at most this is a
# near-tie (float rounding of a T-node vs a one-node forward), counted apart from real mismatches.
NEAR_TIE_GAP = 1e-3


def select(prompts: list[Prompt], *, limit: int | None = None, per_category: int | None = None) -> list[Prompt]:
  """per_category: the first K of each category group (file order); then limit: the first K of those."""
  for name, v in (("limit", limit), ("per_category", per_category)):
    if v is not None and v < 1:
      raise ValueError(f"{name} must be >= 1, got {v}")
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


def ordered_groups(groups) -> list[str]:
  present = set(groups)
  return [g for g in GROUPS if g in present] + sorted(present - set(GROUPS))


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


def _cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), which machines of the same kind differ by."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info(with_torch: bool = False) -> dict:
  import jax
  info = {"platform": platform.platform(), "machine": platform.machine(), "processor": _cpu_model(),
          "python": platform.python_version(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
  if with_torch:
    try:
      import torch
      import transformers
      info.update(torch=torch.__version__, transformers=transformers.__version__,
                  torch_threads=torch.get_num_threads())
    except ImportError:
      pass
  return info


def _loadavg():
  """1-minute load average (other processes on the machine skew timings), or None where unknown."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


# ----------------------------------------------------------------------------- records file

def _key(method: str, pid) -> tuple[str, str]:
  return method, str(pid)


def _prompt_sha(ids: list[int]) -> str:
  return hashlib.sha1(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16]


def load_records(path: pathlib.Path) -> dict[tuple[str, str], dict]:
  """(method, str(id)) -> record; a later record for the same key wins. Unreadable lines (a write cut
  short by a crash) are removed from the file once, with a warning (specjax.io.records)."""
  return {_key(r["method"], r["id"]): r
          for r in records_io.load(path, valid=_is_record, label="specjax bench")}


def _is_record(r: dict) -> bool:
  return isinstance(r.get("method"), str) and isinstance(r.get("id"), (str, int))


def _options_of(drafter) -> dict:
  """Every option of a drafter, defaults included, as JSON values: an option given explicitly at its
  default and one left out record the same settings."""
  opts = {f.name: getattr(drafter, f.name) for f in dataclasses.fields(drafter) if f.init}
  return json.loads(json.dumps(opts, default=repr))


def _resolved(settings, drafter: str | None) -> dict:
  """Recorded settings with the drafter's options completed by its defaults (older records hold only
  the options that were given)."""
  from specjax.drafters import registry
  if not isinstance(settings, dict):
    return {}
  if drafter is not None and isinstance(settings.get("options"), dict):
    try:
      settings = dict(settings, options=_options_of(registry.make(drafter, **settings["options"])))
    except (ValueError, TypeError):
      pass                           # options no longer valid: compared as recorded, so they differ
  return settings


def _check_settings(old: dict, settings: dict, method: str, path: pathlib.Path):
  diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v]
  if diff:
    raise ValueError(f"{path} holds {method!r} records measured with other settings ({'; '.join(diff)}); "
                     "use another --out directory or delete that file")


# ----------------------------------------------------------------------------- aggregation

def first_diff(a: list[int], b: list[int]) -> int | None:
  """Index of the first differing token, or None when equal."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def divergence_gaps(target, records: dict, prompts: list[Prompt], methods: list[str], ids: dict) -> dict:
  """(method, prompt) -> top-2 logit gap of the target at the first token where the method's greedy
  output leaves the baseline's, for every output that differs."""
  from specjax import api
  gaps = {}
  for m in methods:
    for p in prompts:
      r, b = records.get(_key(m, p.id)), records.get(_key(BASELINE, p.id))
      if m == BASELINE or r is None or b is None:
        continue
      d = first_diff(r["token_ids"], b["token_ids"])
      if d is not None:
        gaps[_key(m, p.id)] = api.next_token_gap(target, ids[str(p.id)] + b["token_ids"][:d])
  return gaps


def _totals(recs: list[dict]) -> dict:
  new = sum(r["new_tokens"] for r in recs)
  fw = sum(r["target_forwards"] for r in recs)
  wall = sum(r["wall_s"] for r in recs)
  return {"prompts": len(recs), "new_tokens": new, "target_forwards": fw, "wall_s": wall,
          "tokens_per_s": new / wall if wall > 0 else None, "tau": new / fw if fw else None}


def aggregate(records: dict, prompts: list[Prompt], methods: list[str], *, greedy: bool,
              gaps: dict | None = None) -> dict:
  """method -> group -> figures (see the module docstring), over the selected prompts."""
  groups = ordered_groups(p.group for p in prompts) + [OVERALL]
  out = {}
  for m in methods:
    out[m] = {}
    for g in groups:
      ps = [p for p in prompts if g == OVERALL or p.group == g]
      pairs = [(records[_key(m, p.id)], records[_key(BASELINE, p.id)]) for p in ps
               if _key(m, p.id) in records and _key(BASELINE, p.id) in records]
      mine, base = _totals([a for a, _ in pairs]), _totals([b for _, b in pairs])
      speedup = (mine["tokens_per_s"] / base["tokens_per_s"]
                 if mine["tokens_per_s"] and base["tokens_per_s"] else None)
      ident = None
      if greedy:
        ident = {"identical": sum(a["token_ids"] == b["token_ids"] for a, b in pairs), "total": len(pairs),
                 "near_tie": sum(1 for p in ps if (gaps or {}).get(_key(m, p.id), float("inf")) <= NEAR_TIE_GAP)}
      out[m][g] = {**mine, "speedup": speedup, "identical_to_baseline": ident,
                   "baseline_tokens_per_s": base["tokens_per_s"]}
  return out


def prompt_records(records: dict, prompts: list[Prompt], methods: list[str], *, greedy: bool,
                   gaps: dict | None = None) -> list[dict]:
  out = []
  for m in methods:
    for p in prompts:
      r = records.get(_key(m, p.id))
      if r is None:
        continue
      b = records.get(_key(BASELINE, p.id))
      d = first_diff(r["token_ids"], b["token_ids"]) if (b is not None and greedy) else None
      row = {k: v for k, v in r.items() if k not in ("token_ids", "settings", "prompt_sha")}
      row["identical_to_baseline"] = (d is None) if (b is not None and greedy) else None
      row["first_diff"] = d
      row["divergence_gap"] = (gaps or {}).get(_key(m, p.id))
      out.append(row)
  return out


# ----------------------------------------------------------------------------- reports

def _fmt(x, spec=".2f", none="–"):
  return none if x is None else format(x, spec)


def write_markdown(path: pathlib.Path, results: dict):
  agg, groups, methods = results["results"], results["groups"], results["methods"]
  cfg, mach = results["config"], results["machine"]
  lines = ["# specjax bench", "",
           f"Model `{cfg['model']}` ({cfg['dtype']}), {cfg['prompts_selected']} prompts from "
           f"`{cfg['prompts_file']}`, max_new_tokens {cfg['max_new_tokens']}, temperature {cfg['temperature']}, "
           f"batch size {cfg['batch_size']}. Machine: {mach.get('processor') or '?'}, {mach['platform']}, {mach['cpu_count']} CPUs, "
           f"JAX {mach['jax']} ({mach['backend']}), load average {mach.get('loadavg_start')} at the start, "
           f"{mach.get('loadavg_end')} at the end (other processes skew timings).", "",
           "## Speedup over the autoregressive baseline (tau)", "",
           "| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
  for m in methods:
    cells = []
    for g in groups:
      a = agg[m][g]
      cells.append(f"{_fmt(a['speedup'])}x ({_fmt(a['tau'])})" if a["speedup"] is not None else "–")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines += ["", "## Outputs identical to the baseline (greedy, token for token)", "",
            "| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
  for m in methods:
    cells = []
    for g in groups:
      i = agg[m][g]["identical_to_baseline"]
      tie = f" (+{i['near_tie']} near-tie)" if i and i.get("near_tie") else ""
      cells.append(f"{i['identical']}/{i['total']}{tie}" if i else "n/a (sampling)")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines += ["", f"A near-tie is a divergence whose top-2 logit gap at the first differing token is at most "
            f"{results.get('near_tie_gap', NEAR_TIE_GAP)} (float rounding); any other divergence is a real mismatch.",
            "", "## Tokens per second", "",
            "| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
  for m in methods:
    lines.append(f"| {m} | " + " | ".join(_fmt(agg[m][g]["tokens_per_s"], ".1f") for g in groups) + " |")
  lines += ["", "speedup = (sum new tokens / sum wall s) of the method over the baseline's on the same prompts; "
            "tau = new tokens per target forward; compilation excluded.", ""]
  path.write_text("\n".join(lines), encoding="utf-8")


def plot_speedup(path: pathlib.Path, results: dict):
  """Grouped bars: one group per category, one bar per method (the baseline is the line at 1)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  agg, groups = results["results"], results["groups"]
  methods = [m for m in results["methods"] if m != BASELINE] or [BASELINE]
  fig = Figure(figsize=(max(6.0, 1.3 * len(groups) * max(1, len(methods)) / 2 + 2), 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / len(methods)
  x = np.arange(len(groups))
  for i, m in enumerate(methods):
    vals = [agg[m][g]["speedup"] or 0.0 for g in groups]
    bars = ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=m)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=7, padding=1)
  ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
  ax.set_xticks(x, groups, rotation=20)
  ax.set_ylabel("speedup over autoregressive (x)")
  cfg = results["config"]
  ax.set_title(f"specjax: {pathlib.Path(str(cfg['model'])).name}, {cfg['dtype']}, "
               f"{cfg['max_new_tokens']} new tokens, T={cfg['temperature']}", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(str(path), dpi=120)


def _write_atomic(path: pathlib.Path, text: str):
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- Hugging Face peers

class HFPeer:
  """transformers greedy decoding and prompt lookup on the same weights (PyTorch, CPU, float32)."""

  def __init__(self, model_path: str, *, eos_ids: list[int]):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(os.cpu_count() or 1)
    p = pathlib.Path(model_path)
    if p.is_dir():
      kw = dict(pretrained_model_name_or_path=str(p))
    elif p.suffix == ".gguf" and p.exists():
      kw = dict(pretrained_model_name_or_path=str(p.parent), gguf_file=p.name)
    else:
      raise ValueError(f"--peers hf needs the model as a .gguf file or a Hugging Face directory, got {model_path!r}")
    # transformers' GGUF conversion draws its own progress bars on stderr; keep them out of ours.
    with contextlib.redirect_stderr(io.StringIO()):
      model = AutoModelForCausalLM.from_pretrained(**kw, dtype=torch.float32)
    self.torch = torch
    self.model = model.eval()
    self.eos_ids = list(eos_ids)
    self.forwards = 0
    self.model.register_forward_hook(self._count)

  def _count(self, *_):
    self.forwards += 1

  def run(self, ids: list[int], *, max_new_tokens: int, temperature: float, seed: int,
          lookup: tuple[int, int] | None = None) -> dict:
    """lookup: (prompt_lookup_num_tokens, max_matching_ngram_size) for prompt lookup, None for plain."""
    from transformers import GenerationConfig
    torch = self.torch
    kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=self.eos_ids,
              pad_token_id=self.eos_ids[0] if self.eos_ids else 0)
    if temperature > 0:
      kw.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
      kw.update(do_sample=False)
    if lookup is not None:
      kw.update(prompt_lookup_num_tokens=lookup[0], max_matching_ngram_size=lookup[1])
    gc = GenerationConfig(**kw)
    x = torch.tensor([ids], dtype=torch.long)
    torch.manual_seed(seed)
    self.forwards = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
      out = self.model.generate(x, attention_mask=torch.ones_like(x), generation_config=gc)
    wall = time.perf_counter() - t0
    new = out[0, len(ids):].tolist()
    return {"token_ids": new, "new_tokens": len(new), "target_forwards": self.forwards, "wall_s": wall}


# ----------------------------------------------------------------------------- the run

def _load_target(model, dtype):
  import specjax.io as sio
  return sio.load(model, dtype=dtype)


def run_bench(prompts, *, out, drafters=("none", "pld", "lookahead"), target=None, model="default",
              dtype="float32", max_new_tokens: int = 256, limit: int | None = None,
              per_category: int | None = None, batch_size: int = 1, temperature: float = 0.0, seed: int = 0,
              chat: bool = True, peers=(), drafter_options: dict | None = None, progress: bool = True,
              command: list[str] | None = None) -> dict:
  """Runs (or resumes) a benchmark and writes OUT/{records.jsonl, results.json, results.md, speedup.png}.

  prompts: a JSONL path or a list of `Prompt`. target: a loaded `specjax.io.Target`, a zero-argument
  callable returning one (called once the prompts and options are validated), or None to load `model`
  in `dtype`. drafter_options: {drafter name: {option: value}}. Returns the results dict."""
  from specjax import api
  from specjax.drafters import registry

  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  temperature, _, _, _ = api.check_sampling(temperature)
  seed = api.check_seed(seed)
  prompts_file = str(prompts) if not isinstance(prompts, list) else None
  all_prompts = read_prompts(prompts) if prompts_file else list(prompts)
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
  drafter_options = {k: dict(v) for k, v in (drafter_options or {}).items()}
  for name, opts in drafter_options.items():
    if name not in drafters:
      raise ValueError(f"options given for drafter {name!r}, which is not benchmarked")
  made = {d: registry.make(d, **drafter_options.get(d, {})) for d in drafters}   # validates options early
  peer_methods = [m for p in peers for m in PEERS[p]]
  methods = drafters + peer_methods
  greedy = temperature == 0
  pld = made.get("pld") or registry.make("pld", **drafter_options.get("pld", {}))
  lookup = (pld.num_tokens, pld.max_ngram)

  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} exists and is not a directory")
  out.mkdir(parents=True, exist_ok=True)

  if target is None:
    target = _load_target(model, dtype)
  elif callable(target):
    target = target()
  model_name = str(target.path)
  if chat:
    target.tokenizer.require_chat_template("pass chat=False (--no-chat)", "--chat-template NAME")
  ids = dict(zip((str(p.id) for p in selected), api.encode_prompts(target, [p.text for p in selected], chat)))
  longest = max(ids.values(), key=len)
  for d in drafters:        # context overflows and bad settings surface now, not hours in
    api.prepare(target, [longest], max_new_tokens=max_new_tokens, drafter=made[d], temperature=temperature)

  base_settings = {"model": model_name, "dtype": str(dtype), "max_new_tokens": max_new_tokens,
                   "temperature": float(temperature), "seed": seed, "chat": bool(chat)}

  def settings_for(m):
    s = dict(base_settings)
    if m in drafters:
      s.update(batch_size=batch_size, options=_options_of(made[m]))
    else:
      s.update(batch_size=1, options={"prompt_lookup": list(lookup)} if m == "hf_pld" else {})
    return s

  rec_path = out / RECORDS
  records = load_records(rec_path)
  by_sha = {str(p.id): _prompt_sha(ids[str(p.id)]) for p in selected}
  for (m, pid), r in list(records.items()):
    if m in methods and pid in by_sha:
      _check_settings(_resolved(r.get("settings"), m if m in drafters else None), settings_for(m), m, rec_path)
      if r.get("prompt_sha") != by_sha[pid]:
        raise ValueError(f"{rec_path} holds a record for prompt {pid!r} whose text differs from the one now "
                         "given; use another --out directory or delete that file")

  def todo(m, batch):
    return [p for p in batch if _key(m, p.id) not in records]

  work = batches(selected, batch_size)
  hf = None
  if any(todo(m, [p]) for m in peer_methods for p in selected):
    hf = HFPeer(model_name, eos_ids=target.tokenizer.eos_ids)

  # Warm-up: one short call per method that still has work, so the first timed call is steady.
  first = ids[str(selected[0].id)]
  warm_n = min(WARMUP_TOKENS, max_new_tokens)
  for m in methods:
    if not any(todo(m, b) for b in work):
      continue
    if m in drafters:
      api.generate(target, [first], max_new_tokens=warm_n, temperature=temperature, seed=seed, drafter=made[m])
    else:
      hf.run(first, max_new_tokens=warm_n, temperature=temperature, seed=seed,
             lookup=lookup if m == "hf_pld" else None)

  load_start = _loadavg()
  writer = records_io.RecordLog(rec_path)
  from tqdm import tqdm
  done_before = sum(1 for p in selected if all(_key(m, p.id) in records for m in methods))
  bar = tqdm(total=len(selected), initial=done_before, unit="prompt", desc="bench", file=sys.stderr,
             disable=not progress, dynamic_ncols=True)
  try:
    for batch in work:
      if not any(todo(m, batch) for m in methods):
        continue
      for m in methods:
        if not todo(m, batch):
          continue
        bar.set_postfix_str(m, refresh=True)
        new_recs = []
        if m in drafters:
          # A partly recorded batch (a crash between its records; rare) is measured again whole.
          g = api.generate(target, [ids[str(p.id)] for p in batch], max_new_tokens=max_new_tokens,
                           temperature=temperature, seed=seed, drafter=made[m])
          total_new = max(sum(g.new_tokens), 1)
          for i, p in enumerate(batch):
            share = g.wall_s * g.new_tokens[i] / total_new
            new_recs.append(dict(
                method=m, id=p.id, category=p.category, group=p.group, prompt_tokens=len(ids[str(p.id)]),
                new_tokens=g.new_tokens[i], target_forwards=g.target_forwards[i], tau=g.tau[i],
                wall_s=share, batch_wall_s=g.wall_s, batch_size=len(batch), compile_s=g.compile_s,
                tokens_per_s=g.new_tokens[i] / share if share > 0 else None,
                accepted_hist=g.accepted_hist[i], token_ids=g.token_ids[i], text=g.texts[i]))
        else:
          for p in todo(m, batch):
            r = hf.run(ids[str(p.id)], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                       lookup=lookup if m == "hf_pld" else None)
            new_recs.append(dict(
                method=m, id=p.id, category=p.category, group=p.group, prompt_tokens=len(ids[str(p.id)]),
                new_tokens=r["new_tokens"], target_forwards=r["target_forwards"],
                tau=r["new_tokens"] / max(r["target_forwards"], 1), wall_s=r["wall_s"],
                batch_wall_s=r["wall_s"], batch_size=1, compile_s=0.0,
                tokens_per_s=r["new_tokens"] / r["wall_s"] if r["wall_s"] > 0 else None,
                accepted_hist=None, token_ids=r["token_ids"], text=target.tokenizer.decode(r["token_ids"])))
        for r in new_recs:
          r["settings"] = settings_for(m)
          r["prompt_sha"] = by_sha[str(r["id"])]
          records[_key(m, r["id"])] = r
        writer.write(new_recs)
      bar.update(len(batch))
  finally:
    bar.close()
    writer.close()

  gaps = divergence_gaps(target, records, selected, methods, ids) if greedy else {}
  groups = ordered_groups(p.group for p in selected) + [OVERALL]
  results = {
      "baseline": BASELINE,
      "methods": methods,
      "groups": groups,
      "machine": {**machine_info(with_torch=bool(peers)), "loadavg_start": load_start, "loadavg_end": _loadavg()},
      "config": {"command": command, "prompts_file": prompts_file, "prompts_total": len(all_prompts),
                 "prompts_selected": len(selected), "limit": limit, "per_category": per_category,
                 "drafters": drafters, "peers": peers, "drafter_options": drafter_options,
                 "hf_prompt_lookup": {"prompt_lookup_num_tokens": lookup[0], "max_matching_ngram_size": lookup[1]}
                 if peers else None,
                 "model": model_name, "dtype": str(dtype), "max_new_tokens": max_new_tokens,
                 "batch_size": batch_size, "temperature": float(temperature), "seed": seed, "chat": bool(chat),
                 "greedy": greedy},
      "near_tie_gap": NEAR_TIE_GAP,
      "results": aggregate(records, selected, methods, greedy=greedy, gaps=gaps),
      "records": prompt_records(records, selected, methods, greedy=greedy, gaps=gaps),
  }
  _write_atomic(out / "results.json", json.dumps(results, indent=1))
  write_markdown(out / "results.md", results)
  plot_speedup(out / "speedup.png", results)
  return results
