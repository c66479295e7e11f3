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

import argparse
import json
import sys

from specjax.interrupt import EXIT_INTERRUPTED, exit_on_interrupt, interrupted  # noqa: F401 (EXIT_INTERRUPTED: public)

EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors: `specjax: error: ...` and exit status 2."""

  def error(self, message):
    _fail(f"{message} (see '{self.prog} --help')")


def _fail(message: str):
  one_line = " ".join(str(message).split())
  print(f"specjax: error: {one_line}", file=sys.stderr)
  sys.exit(EXIT_ERROR)


def load_target(model: str, dtype: str, **kwargs):
  """The one place the CLI loads a model (tests monkeypatch it). kwargs: chat_template."""
  import specjax.io as sio
  return sio.load(model, dtype=dtype, **kwargs)


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


def _add_parallel_args(p):
  p.add_argument("--mesh", metavar="data=D,model=M", default=None,
                 help="run sharded over a device mesh: batch over 'data', weights over 'model'")
  p.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                 help="multi-host: the coordinator's address ('auto': detect a TPU VM or SLURM cluster)")
  p.add_argument("--num-processes", type=_positive_int, default=None, help="multi-host: how many processes")
  p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
  p.add_argument("--init-timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                 help="multi-host: how long to wait for every process to start before exiting with status 2 (300)")


def _add_tree_budget_arg(p):
  p.add_argument("--tree-budget", choices=["fixed", "auto"], default="fixed",
                 help="fixed: the drafter's options; auto: the budget (possibly none) with the most tokens/s at this "
                 "batch size, from step costs measured on this machine (cached) and the drafter's measured acceptance")


def _positive_int(s: str) -> int:
  try:
    v = int(s)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
  if v < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
  return v


def _positive_float(s: str) -> float:
  try:
    v = float(s)
  except ValueError:
    v = float("nan")
  if not 0 < v < 1e6:
    raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {s!r}")
  return v


def _option_value(s: str):
  try:
    return json.loads(s)
  except json.JSONDecodeError:
    return s


def _add_draft_args(p):
  p.add_argument("--draft-model", metavar="PATH", help="draft-model: the draft's GGUF / HF directory or 'default' "
                 "(the same as -O model=PATH)")
  p.add_argument("--exit-layer", type=_positive_int, metavar="K", help="self-spec, staged: draft with the target's "
                 "first K layers (the same as -O exit_layer=K)")


def _drafter_options(a) -> dict:
  """-O KEY=VALUE options plus the --draft-model / --exit-layer shortcuts."""
  out = _parse_options(a.drafter_option, qualified=False)
  for flag, opt in (("draft_model", "model"), ("exit_layer", "exit_layer")):
    if getattr(a, flag) is not None:
      if opt in out:
        raise ValueError(f"--{flag.replace('_', '-')} and -O {opt}=... both given; give one")
      out[opt] = getattr(a, flag)
  return out


def _parse_options(items, *, qualified: bool) -> dict:
  """KEY=VALUE (generate) or DRAFTER.KEY=VALUE (bench); values are JSON when they parse, else strings."""
  out: dict = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"drafter option {item!r} is not {'DRAFTER.KEY' if qualified else 'KEY'}=VALUE")
    if qualified:
      name, dot, opt = key.partition(".")
      if not dot or not name or not opt:
        raise ValueError(f"drafter option {item!r} is not DRAFTER.KEY=VALUE (e.g. pld.num_tokens=8)")
      out.setdefault(name, {})[opt] = _option_value(value)
    else:
      out[key] = _option_value(value)
  return out


def _add_model_args(p):
  p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), a .gguf file or a HF directory")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights dtype (default float32)")
  p.add_argument("--precision", default="exact", choices=["exact", "fast"],
                 help="matmul numerics: exact (default; true float32, identical to autoregressive decoding) or fast "
                      "(the backend's default: TF32 on GPUs, one bfloat16 pass on TPUs; may differ at near-ties)")
  p.add_argument("--chat-template", metavar="NAME", default=None,
                 help="which of the model's named chat templates to use (default: 'default')")


def build_parser() -> argparse.ArgumentParser:
  from specjax.drafters import registry      # names only: imports no JAX
  drafters = registry.describe()
  parser = _Parser(prog="specjax", description="Lossless speculative decoding in JAX.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  sub.required = True

  g = sub.add_parser("generate", help="generate answers for prompts", description="Generate answers for prompts "
                     "(positional, or a JSONL file of {\"prompt\": ...} objects or Spec-Bench rows).")
  g.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text(s)")
  g.add_argument("--prompts-file", metavar="FILE.jsonl", help="one JSON object per line: {\"prompt\": ...} or a "
                 "Spec-Bench row (its first turn; question_id becomes the id); - reads standard input")
  _add_model_args(g)
  g.add_argument("--max-new-tokens", type=_positive_int, default=128)
  g.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
  g.add_argument("--top-k", type=int, default=None)
  g.add_argument("--top-p", type=float, default=None)
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--no-chat", action="store_true", help="do not apply the model's chat template")
  g.add_argument("--allow-special-tokens", action="store_true",
                 help="encode special-token text in prompts (e.g. <|im_end|>) as special tokens; by default it is "
                 "plain text, so a prompt cannot forge chat turns")
  g.add_argument("--json", action="store_true", help="print one JSON object per prompt per line")
  g.add_argument("--check", action="store_true",
                 help="greedy only: also decode autoregressively and report, per prompt, whether the output is "
                      "identical, else the first differing token and the target's top-2 logit gap there")
  g.add_argument("--time-prefill", action="store_true",
                 help="also report the prefill's time and decoding's own tokens/s (the program is then not kept in "
                 "the persistent compilation cache: each new process compiles it)")
  g.add_argument("--drafter", default="none", help=f"none is autoregressive; {drafters}")
  g.add_argument("--acceptance", choices=["greedy", "sample", "typical"], default=None,
                 help="default: greedy at temperature 0, else sample (lossless); typical is lossy")
  g.add_argument("-O", "--drafter-option", action="append", metavar="KEY=VALUE",
                 help="drafter option, e.g. -O num_tokens=8 (repeatable)")
  _add_draft_args(g)
  g.add_argument("--batch-size", type=_positive_int, default=None,
                 help="prompts per generate call (default: all positional prompts at once; 1 for a file)")
  _add_tree_budget_arg(g)
  _add_parallel_args(g)
  g.set_defaults(func=cmd_generate)

  i = sub.add_parser("info", help="devices, JAX version, default model path")
  i.set_defaults(func=cmd_info)

  b = sub.add_parser("bench", help="benchmark drafters against the autoregressive baseline",
                     description="Measure the autoregressive baseline and drafters on a JSONL prompts file; "
                     "writes OUT/results.json, results.md, speedup.png and records.jsonl (resumable).")
  b.add_argument("--prompts", required=True, metavar="FILE.jsonl", help="a JSONL prompts file; - reads standard input")
  b.add_argument("--drafters", default="none,pld,lookahead", help=f"comma-separated (none is always run first): {drafters}")
  b.add_argument("--max-new-tokens", type=_positive_int, default=256)
  b.add_argument("--limit", type=_positive_int, default=None, help="the first K prompts")
  b.add_argument("--per-category", type=_positive_int, default=None, help="up to K prompts per category group")
  b.add_argument("--batch-size", type=_positive_int, default=1)
  b.add_argument("--temperature", type=float, default=0.0)
  b.add_argument("--seed", type=int, default=0)
  b.add_argument("--peers", default="", help="comma-separated peers: hf (transformers greedy and prompt lookup), llamacpp "
                 "(llama.cpp float32 and native GGUF, greedy and prompt lookup; the bench extra)")
  b.add_argument("--no-chat", action="store_true", help="do not apply the model's chat template")
  b.add_argument("--no-progress", action="store_true", help="no progress bar")
  b.add_argument("-O", "--drafter-option", action="append", metavar="DRAFTER.KEY=VALUE",
                 help="drafter option, e.g. -O pld.num_tokens=8 (repeatable)")
  _add_tree_budget_arg(b)
  _add_model_args(b)
  b.add_argument("--mesh", metavar="data=D,model=M", default=None,
                 help="run every method sharded over a device mesh of this process (the peers run unsharded)")
  b.add_argument("--out", required=True, metavar="DIR")
  b.set_defaults(func=cmd_bench)

  j = sub.add_parser("batch", help="answer every prompt of a JSONL file (crash-safe, resumable)",
                     description="Answer every prompt of a JSONL file into OUT, one JSON record a line (the fields of "
                     "'generate --json' plus the input line). Killed at any point, the same command resumes; each input "
                     "id is answered exactly once. Malformed rows go to OUT's .errors.jsonl with their line number.")
  j.add_argument("--in", dest="inp", required=True, metavar="FILE.jsonl", help="prompts: {\"prompt\": ...} or Spec-Bench rows")
  j.add_argument("--out", required=True, metavar="FILE.jsonl")
  j.add_argument("--drafter", default="none", help=f"none is autoregressive; {drafters}")
  j.add_argument("-O", "--drafter-option", action="append", metavar="KEY=VALUE", help="drafter option (repeatable)")
  _add_draft_args(j)
  j.add_argument("--batch-size", type=_positive_int, default=8)
  j.add_argument("--max-new-tokens", type=_positive_int, default=128)
  j.add_argument("--temperature", type=float, default=0.0)
  j.add_argument("--top-k", type=int, default=None)
  j.add_argument("--top-p", type=float, default=None)
  j.add_argument("--seed", type=int, default=0)
  j.add_argument("--acceptance", choices=["greedy", "sample", "typical"], default=None)
  j.add_argument("--no-chat", action="store_true", help="do not apply the model's chat template")
  j.add_argument("--allow-special-tokens", action="store_true")
  j.add_argument("--overwrite", action="store_true", help="discard OUT (and its errors and settings files) and start again")
  j.add_argument("--no-progress", action="store_true")
  _add_tree_budget_arg(j)
  _add_model_args(j)
  _add_parallel_args(j)
  j.set_defaults(func=cmd_batch)

  t = sub.add_parser("train", help="train a drafter for the model (self-distillation, resumable)",
                     description="Train a drafter on the target's own answers to the shared train prompts and write "
                     "OUT/<drafter>.safetensors. Rerunning the same command resumes (data, features and optimiser "
                     "state are cached).")
  t.add_argument("--drafter", default="medusa", choices=registry.TRAINED)
  t.add_argument("--out", required=True, metavar="DIR")
  t.add_argument("--data", default="distill", choices=["distill", "teacher"],
                 help="distill: the target's own greedy answers (default); teacher: the files' own answers")
  t.add_argument("--prompts", default=None, metavar="DIR|FILE",
                 help="a train-prompts directory or a JSONL / JSON prompts file (default: the prompt mix shipped with specjax)")
  t.add_argument("--sequences", default=None, metavar="FILE.jsonl", help="answers generated elsewhere (benchmarks/gpu_distill.py)")
  t.add_argument("--max-prompts", type=_positive_int, default=2000)
  t.add_argument("--heldout-prompts", type=_positive_int, default=100)
  t.add_argument("--steps", type=_positive_int, default=2000)
  t.add_argument("--batch", type=_positive_int, default=None,
                 help="medusa: positions per step (default 256); clover, clover2, eagle, eagle3: sequences per step (default 4)")
  t.add_argument("--layers", type=_positive_int, default=1,
                 help="medusa, early-exit: ResBlocks per head; clover, clover2: augmenting decoder layers; eagle, eagle3: not used (one layer)")
  t.add_argument("--lr", type=float, default=1e-3)
  t.add_argument("--heads", type=_positive_int, default=4,
                 help="medusa, clover, clover2: heads (tree depth); eagle3: training-time-test steps; eagle: not used")
  t.add_argument("--draft-vocab", type=int, default=4096, help="0: the full vocabulary")
  t.add_argument("--nodes", type=_positive_int, default=12, help="tree budget stored with the checkpoint")
  t.add_argument("--exit-layer", type=_positive_int, default=None, metavar="K",
                 help="early-exit: the adapter reads the residual after the target's first K layers (required)")
  t.add_argument("--feature-batch-tokens", type=_positive_int, default=4096)
  t.add_argument("--eval-every", type=_positive_int, default=500, help="held-out evaluation every N steps (and at the end)")
  t.add_argument("--max-seconds", type=float, default=None,
                 help="stop early after this long training (checkpointed; rerun without it to continue)")
  t.add_argument("--resume", action="store_true", help="continue a run in OUT (also what rerunning does)")
  t.add_argument("--overwrite", action="store_true", help="discard a run in OUT and start again")
  t.add_argument("--no-progress", action="store_true")
  _add_model_args(t)
  t.set_defaults(func=cmd_train)
  return parser


# ----------------------------------------------------------------------------- generate

def cmd_generate(a) -> int:
  from specjax import api
  from specjax.batch import answer_record
  from specjax.drafters import registry
  from specjax.io.prompts import Prompt, check_text, read_prompts

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
  options = _drafter_options(a)
  drafter = registry.make(a.drafter, **options)          # unknown names and bad options fail before loading
  if a.tree_budget == "auto":
    from specjax import budget
    budget.candidates(drafter)
  api.check_sampling(a.temperature, a.top_k, a.top_p, a.acceptance)
  api.check_seed(a.seed)
  if a.check and a.temperature != 0:
    raise ValueError("--check compares greedy outputs: use it with temperature 0")
  _start_parallel(a)

  target = _load(a)
  import jax
  quiet = jax.process_index() != 0        # multi-host: process 0 prints the answers
  chat = not a.no_chat
  if chat:
    target.tokenizer.require_chat_template("pass --no-chat", "--chat-template NAME")
  ids = api.encode_prompts(target, [p.text for p in prompts], chat, a.allow_special_tokens)
  longest = max(ids, key=len)
  api.prepare(target, [longest], max_new_tokens=a.max_new_tokens, drafter=drafter, temperature=a.temperature,
              top_k=a.top_k, top_p=a.top_p, acceptance=a.acceptance)   # checks every setting before any work

  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    g = api.generate(target, ids[start:start + batch_size], max_new_tokens=a.max_new_tokens,
                     temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed, chat=chat,
                     drafter=drafter, acceptance=a.acceptance, tree_budget=a.tree_budget, time_prefill=a.time_prefill)
    checks = _check(a, target, ids[start:start + batch_size], g) if a.check else None
    for i, p in enumerate(batch):
      row = answer_record(g, i, p.id)
      if checks is not None:
        row["check"] = checks[i]
      if quiet:
        continue
      if a.json:
        print(json.dumps(row, ensure_ascii=False), flush=True)
      else:
        if len(prompts) > 1:
          print(f"=== {p.id} ===")
        print(row["text"], flush=True)
        decoding = "" if g.prefill_s is None else f" ({row['decode_tokens_per_s']:.1f} decoding)"
        prefill = "" if g.prefill_s is None else f", prefill {g.prefill_s:.2f} s"
        print(f"[{row['new_tokens']} new tokens, {row['target_forwards']} target forwards, tau {row['tau']:.2f}, "
              f"{row['tokens_per_s']:.1f} tokens/s{decoding}, drafter {g.drafter} ({g.budget}), acceptance "
              f"{g.acceptance}{'' if g.lossless else ' (lossy)'}; batch of {len(batch)}: {g.wall_s:.2f} s{prefill}, "
              f"compile {g.compile_s:.1f} s]", file=sys.stderr, flush=True)
        if checks is not None:
          c = checks[i]
          print("[check: identical to autoregressive decoding]" if c["identical"] else
                f"[check: differs from autoregressive decoding at new token {c['position']}; the target's top-2 "
                f"logit gap there: {c['gap']:.3g}]", file=sys.stderr, flush=True)
  return 0


def _check(a, target, ids, g) -> list[dict]:
  """--check: per row, {"identical": bool} plus, where the output differs from autoregressive decoding of the
  same target and precision, the first differing position and the target's top-2 logit gap there."""
  from specjax import api
  if g.drafter == "none":
    return [{"identical": True} for _ in ids]
  base = api.generate(target, ids, max_new_tokens=a.max_new_tokens, chat=False)
  out = []
  for p, mine, ref in zip(ids, g.token_ids, base.token_ids):
    d = api.divergence(target, p, ref, mine)
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
                  chat=not a.no_chat, peers=peers, drafter_options=_parse_options(a.drafter_option, qualified=True),
                  progress=not a.no_progress, command=["specjax", *sys.argv[1:]] if a.argv is None else
                  ["specjax", *a.argv], tree_budget=a.tree_budget)
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
                  drafter_options=_drafter_options(a), batch_size=a.batch_size,
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
  # The target is loaded by train_drafter after it has checked every other argument (--out first).
  train_drafter(lambda: load_target(a.model, a.dtype), drafter=a.drafter, out=a.out, data=a.data,
                max_prompts=a.max_prompts, heldout_prompts=a.heldout_prompts, sequences_file=a.sequences,
                prompts_dir=a.prompts, overwrite=a.overwrite, progress=not a.no_progress,
                feature_batch_tokens=a.feature_batch_tokens, log=lambda m: print(m, file=sys.stderr, flush=True),
                steps=a.steps, batch=a.batch, lr=a.lr, heads=a.heads, layers=a.layers, draft_vocab=a.draft_vocab,
                nodes=a.nodes, eval_every=a.eval_every, max_seconds=a.max_seconds, exit_layer=a.exit_layer or 0)
  return 0


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
  # The handler comes first: nothing above imports JAX (specjax/__init__.py imports lazily), so a Ctrl-C
  # at any moment, even inside `import jax`, exits 130 with one line.
  with exit_on_interrupt(restore=argv is not None):
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    try:
      return args.func(args)
    except (ValueError, FileNotFoundError, OSError, FloatingPointError) as e:
      _fail(str(e) or type(e).__name__)
    except KeyboardInterrupt:              # only if something replaced our handler
      interrupted()


if __name__ == "__main__":
  sys.exit(main())
