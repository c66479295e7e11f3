"""Command line: `specjax generate`, `specjax batch`, `specjax info`, `specjax bench`, `specjax train`.

    specjax generate --drafter pld "Summarise why the sky is blue."
    specjax generate --json --prompts-file prompts.jsonl --batch-size 4 > answers.jsonl
    specjax batch --in prompts.jsonl --out results.jsonl --drafter pld --batch-size 8
    specjax info
    specjax bench --prompts dev.jsonl --drafters none,pld,lookahead --per-category 5 --out bench_out

Answers go to stdout; speed lines, progress bars and errors go to stderr. Errors print one line,
`specjax: error: ...`, and exit with status 2; Ctrl-C prints `specjax: interrupted` and exits with 130.
"""
from __future__ import annotations

import json
import sys

from specjax.interrupt import EXIT_INTERRUPTED, exit_on_interrupt, interrupted  # noqa: F401 (EXIT_INTERRUPTED: public)

from specjax.cli_args import EXIT_ERROR, build_parser, drafter_options, fail, parse_options  # noqa: F401 (EXIT_ERROR)

# Everything else is imported inside the command that needs it: help and argument errors must not wait for
# JAX, and Ctrl-C handling is in place before `import jax` (tests/test_interrupt.py: no JAX, no numpy here).


def load_target(model: str, dtype: str, **kwargs):
  """The one place the CLI loads a model (tests monkeypatch it). kwargs: chat_template, precision, mesh."""
  from specjax import api
  return api.load(model, dtype=dtype, **kwargs)


def _load(a, local: bool = False):
  """load_target with --chat-template and --mesh only when given (monkeypatched loaders take (model, dtype)).
  local: the mesh over this process's own devices (a multi-host batch job's processes work apart)."""
  extra = {"chat_template": a.chat_template} if a.chat_template is not None else {}
  if getattr(a, "precision", "exact") != "exact":
    extra["precision"] = a.precision
  if getattr(a, "mesh_axes", None):
    import jax

    from specjax.parallel import make_mesh
    extra["mesh"] = make_mesh(**a.mesh_axes, devices=jax.local_devices() if local else None)
  return load_target(a.model, a.dtype, **extra)


def _start_parallel(a):
  """--mesh checked and multi-host started before the model loads (jax.distributed must come first)."""
  from specjax.parallel import hosts, parse_mesh
  a.mesh_axes = parse_mesh(a.mesh) if a.mesh else None
  hosts.initialize(a.coordinator, a.num_processes, a.process_id, timeout=a.init_timeout)


# ----------------------------------------------------------------------------- generate

def cmd_generate(a) -> int:
  from specjax.batch import answer_record
  from specjax.io.prompts import Prompt, check_text, read_prompts
  from specjax.program import Program, Settings, encode_prompts

  # Everything that can be checked without the model is checked before it loads.
  if a.prompts and a.prompts_file:
    raise ValueError("give prompts as arguments or --prompts-file, not both")
  if a.prompts_file:
    prompts = read_prompts(a.prompts_file)
    batch_size = a.batch_size or 1
  elif a.prompts:
    prompts = [Prompt(i, check_text(t, f"prompt {i}"), "other", "other") for i, t in enumerate(a.prompts)]
    batch_size = a.batch_size or len(prompts)
  else:
    raise ValueError("no prompts: give PROMPT arguments or --prompts-file FILE.jsonl")
  for p in prompts:
    if not p.text.strip():
      raise ValueError(f"prompt {p.id!r} is empty")
  settings = Settings.make(drafter=a.drafter, drafter_options=drafter_options(a), max_new_tokens=a.max_new_tokens,
                           temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, acceptance=a.acceptance,
                           seed=a.seed, chat=not a.no_chat, allow_special=a.allow_special_tokens,
                           tree_budget=a.tree_budget, time_prefill=a.time_prefill)
  if a.check and a.temperature != 0:
    raise ValueError("--check compares greedy outputs: use it with temperature 0")
  _start_parallel(a)

  target = _load(a)
  import jax
  quiet = jax.process_index() != 0        # multi-host: process 0 prints the answers
  if settings.chat:
    target.tokenizer.require_chat_template("pass --no-chat", "--chat-template NAME")
  ids = encode_prompts(target, [p.text for p in prompts], settings.chat, settings.allow_special)
  program = Program(target)
  program.prepare([max(ids, key=len)], settings)       # the longest prompt fits: checked before any work

  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    g = program.generate(ids[start:start + batch_size], settings)
    checks = _check(program, a.max_new_tokens, ids[start:start + batch_size], g) if a.check else None
    for i, p in enumerate(batch):
      row = answer_record(g, i, p.id)
      if checks is not None:
        row["check"] = checks[i]
      if not quiet:
        _print_answer(row, g, json_lines=a.json, titled=len(prompts) > 1, batch=len(batch))
  return 0


def _print_answer(row: dict, g, *, json_lines: bool, titled: bool, batch: int) -> None:
  """One answer: a JSON line, or its text on stdout and a speed line (and --check's verdict) on stderr."""
  if json_lines:
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return
  if titled:
    print(f"=== {row['id']} ===")
  print(row["text"], flush=True)
  decoding = "" if g.prefill_s is None else f" ({row['decode_tokens_per_s']:.1f} decoding)"
  prefill = "" if g.prefill_s is None else f", prefill {g.prefill_s:.2f} s"
  print(f"[{row['new_tokens']} new tokens, {row['target_forwards']} target forwards, tau {row['tau']:.2f}, "
        f"{row['tokens_per_s']:.1f} tokens/s{decoding}, drafter {g.drafter} ({g.budget}), acceptance "
        f"{g.acceptance}{'' if g.lossless else ' (lossy)'}; batch of {batch}: {g.wall_s:.2f} s{prefill}, "
        f"compile {g.compile_s:.1f} s]", file=sys.stderr, flush=True)
  if "check" in row:
    c = row["check"]
    print("[check: identical to autoregressive decoding]" if c["identical"] else
          f"[check: differs from autoregressive decoding at new token {c['position']}; the target's top-2 "
          f"logit gap there: {c['gap']:.3g}]", file=sys.stderr, flush=True)


def _check(program, max_new_tokens: int, ids, g) -> list[dict]:
  """--check: per row, {"identical": bool} plus, where the output differs from autoregressive decoding of the
  same target and precision, the first differing position and the target's top-2 logit gap there."""
  from specjax.program import Settings, divergence
  if g.drafter == "none":
    return [{"identical": True} for _ in ids]
  base = program.generate(ids, Settings.make(max_new_tokens=max_new_tokens))
  out = []
  for p, mine, ref in zip(ids, g.token_ids, base.token_ids):
    d = divergence(program.target, p, ref, mine)
    out.append({"identical": True} if d is None else {"identical": False, **d})
  return out


# ----------------------------------------------------------------------------- info

def cmd_info(a) -> int:
  import platform
  from importlib import metadata

  import jax

  import specjax.io as sio
  from specjax.drafters import registry

  try:
    version = metadata.version("specjax")
  except metadata.PackageNotFoundError:
    version = "(not installed)"
  print(f"specjax {version}, Python {platform.python_version()}")
  print(f"JAX {jax.__version__}, backend {jax.default_backend()}")
  print("devices: " + ", ".join(f"{d} ({d.device_kind})" for d in jax.devices()))
  try:
    print(f"default model: {sio.default_model_path()}")
  except FileNotFoundError as e:
    print(f"default model: not available: {e}")
  print("drafters: " + ", ".join(registry.names()))
  return 0


# ----------------------------------------------------------------------------- bench

def cmd_bench(a) -> int:
  from specjax.bench import run_bench

  from specjax.parallel import parse_mesh

  drafters = [d.strip() for d in a.drafters.split(",") if d.strip()]
  peers = [p.strip() for p in a.peers.split(",") if p.strip()]
  a.mesh_axes = parse_mesh(a.mesh) if a.mesh else None
  res = run_bench(a.prompts, out=a.out, drafters=drafters, target=lambda: _load(a),
                  model=a.model, dtype=a.dtype, max_new_tokens=a.max_new_tokens, limit=a.limit,
                  per_category=a.per_category, batch_size=a.batch_size, temperature=a.temperature, seed=a.seed,
                  chat=not a.no_chat, peers=peers, drafter_options=parse_options(a.drafter_option, qualified=True),
                  progress=not a.no_progress, command=["specjax", *sys.argv[1:]] if a.argv is None else
                  ["specjax", *a.argv], tree_budget=a.tree_budget, repeats=a.repeats)
  import pathlib
  out = pathlib.Path(a.out)
  print((out / "results.md").read_text(encoding="utf-8"))
  print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'speedup.png'} "
        f"({len(res['records'])} records)", file=sys.stderr)
  return 0


# ----------------------------------------------------------------------------- batch

def cmd_batch(a) -> int:
  from specjax.batch import run_batch

  _start_parallel(a)
  res = run_batch(a.inp, a.out, target=lambda: _load(a, local=True), drafter=a.drafter,
                  drafter_options=drafter_options(a), batch_size=a.batch_size,
                  max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                  seed=a.seed, acceptance=a.acceptance, chat=not a.no_chat, allow_special=a.allow_special_tokens,
                  overwrite=a.overwrite, progress=not a.no_progress, tree_budget=a.tree_budget)
  print(f"{res['out']}: {res['written']} answered now, {res['skipped']} already there; {res['errors']} malformed "
        f"row(s) in {res['errors_file']}{'; merged into ' + res['merged'] if res['merged'] else ''}", file=sys.stderr)
  return 0


# ----------------------------------------------------------------------------- train

def cmd_train(a) -> int:
  from specjax.train import train_drafter

  if a.resume and a.overwrite:
    raise ValueError("--resume and --overwrite contradict each other")
  _start_parallel(a)

  def target():
    if not a.mesh_axes:
      return load_target(a.model, a.dtype)
    from specjax.parallel import make_mesh
    return load_target(a.model, a.dtype, mesh=make_mesh(**a.mesh_axes))
  # The target is loaded by train_drafter after it has checked every other argument (--out first).
  train_drafter(target, drafter=a.drafter, out=a.out, data=a.data, features=a.features,
                max_prompts=a.max_prompts, heldout_prompts=a.heldout_prompts, sequences_file=a.sequences,
                prompts_dir=a.prompts, overwrite=a.overwrite, progress=not a.no_progress,
                feature_batch_tokens=a.feature_batch_tokens, log=lambda m: print(m, file=sys.stderr, flush=True),
                steps=a.steps, batch=a.batch, lr=a.lr, heads=a.heads, layers=a.layers, draft_vocab=a.draft_vocab,
                weight_decay=a.weight_decay, targets=a.targets, own_head=a.own_head,
                nodes=a.nodes, eval_every=a.eval_every, max_seconds=a.max_seconds, exit_layer=a.exit_layer or 0)
  return 0


# ----------------------------------------------------------------------------- main

COMMANDS = {"generate": cmd_generate, "info": cmd_info, "bench": cmd_bench, "batch": cmd_batch, "train": cmd_train}


def main(argv=None) -> int:
  # The handler comes first: nothing above imports JAX (specjax/__init__.py imports lazily), so a Ctrl-C
  # at any moment, even inside `import jax`, exits 130 with one line.
  with exit_on_interrupt(restore=argv is not None):
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    try:
      return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, OSError, FloatingPointError) as e:
      fail(str(e) or type(e).__name__)
    except KeyboardInterrupt:              # only if something replaced our handler
      interrupted()


if __name__ == "__main__":
  sys.exit(main())
