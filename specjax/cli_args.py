"""The command line's arguments: the parser of `specjax COMMAND ...`, its value types and option parsing.

Imports no JAX (the help lists drafter names only), so `specjax --help` and argument errors are instant;
the command bodies are in specjax/cli.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from specjax.checks import positive_int

EXIT_ERROR = 2


class _Formatter(argparse.HelpFormatter):
  """Lines wrap at spaces only: a drafter's name (`hidden-transfer`) is never split at its hyphen."""

  def _split_lines(self, text, width):
    return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors: `specjax: error: ...` and exit status 2; help wrapped by `_Formatter`."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", _Formatter)
    super().__init__(*args, **kwargs)

  def error(self, message):
    fail(f"{message} (see '{self.prog} --help')")


def fail(message: str):
  one_line = " ".join(str(message).split())
  print(f"specjax: error: {one_line}", file=sys.stderr)
  sys.exit(EXIT_ERROR)


def _add_parallel_args(p, mesh_help: str = "run sharded over a device mesh: batch over 'data', weights over 'model'"):
  p.add_argument("--mesh", metavar="data=D,model=M", default=None, help=mesh_help)
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
    return positive_int(int(s), "value")
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None


def _positive_float(s: str) -> float:
  try:
    v = float(s)
  except ValueError:
    v = float("nan")
  if not 0 < v < 1e6:
    raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {s!r}")
  return v


def option_value(s: str):
  try:
    return json.loads(s)
  except json.JSONDecodeError:
    return s


def _add_draft_args(p):
  p.add_argument("--draft-model", metavar="PATH", help="draft-model: the draft's GGUF / HF directory or 'default' "
                 "(the same as -O model=PATH)")
  p.add_argument("--exit-layer", type=_positive_int, metavar="K", help="self-spec, staged: draft with the target's "
                 "first K layers (the same as -O exit_layer=K)")


def drafter_options(a) -> dict:
  """-O KEY=VALUE options plus the --draft-model / --exit-layer shortcuts."""
  out = parse_options(a.drafter_option, qualified=False)
  for flag, opt in (("draft_model", "model"), ("exit_layer", "exit_layer")):
    if getattr(a, flag) is not None:
      if opt in out:
        raise ValueError(f"--{flag.replace('_', '-')} and -O {opt}=... both given; give one")
      out[opt] = getattr(a, flag)
  return out


def parse_options(items, *, qualified: bool) -> dict:
  """KEY=VALUE (generate) or DRAFTER.KEY=VALUE (bench); values are JSON when they parse, else strings."""
  out: dict = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"drafter option {item!r} is not {'DRAFTER.KEY' if qualified else 'KEY'}=VALUE")
    if qualified:
      name, dot, opt = key.rpartition(".")        # the last dot: NAME:PATH names hold dots, option keys none
      if not dot or not name or not opt:
        raise ValueError(f"drafter option {item!r} is not DRAFTER.KEY=VALUE (e.g. pld.num_tokens=8)")
      out.setdefault(name, {})[opt] = option_value(value)
    else:
      out[key] = option_value(value)
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

  i = sub.add_parser("info", help="devices, JAX version, default model path")

  b = sub.add_parser("bench", help="benchmark drafters against the autoregressive baseline",
                     description="Measure the autoregressive baseline and drafters on a JSONL prompts file; "
                     "writes OUT/results.json, results.md, speedup.png and records.jsonl (resumable).")
  b.add_argument("--prompts", required=True, metavar="FILE.jsonl", help="a JSONL prompts file; - reads standard input")
  b.add_argument("--drafters", default="none,pld,lookahead", help=f"comma-separated (none is always run first): {drafters}")
  b.add_argument("--max-new-tokens", type=_positive_int, default=256)
  b.add_argument("--limit", type=_positive_int, default=None, help="the first K prompts")
  b.add_argument("--per-category", type=_positive_int, default=None, help="up to K prompts per category group")
  b.add_argument("--batch-size", type=_positive_int, default=1)
  b.add_argument("--repeats", type=_positive_int, default=1,
                 help="time each drafter call K times back to back and keep the fastest (machines whose speed wanders)")
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

  t = sub.add_parser("train", help="train a drafter for the model (self-distillation, resumable)",
                     description="Train a drafter on the target's own answers to the shared train prompts and write "
                     "OUT/<drafter>.safetensors. Rerunning the same command resumes (data, features and optimiser "
                     "state are cached).")
  t.add_argument("--drafter", default="medusa", choices=registry.trained())
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
                 help="medusa, early-exit, adadecode: positions per step (default 256); clover, clover2, eagle, eagle3, "
                 "hidden-transfer: sequences per step (default 4)")
  t.add_argument("--layers", type=_positive_int, default=1,
                 help="medusa, early-exit, adadecode: ResBlocks per head; clover, clover2: augmenting decoder layers; eagle, eagle3: not used (one layer)")
  t.add_argument("--lr", type=float, default=1e-3)
  t.add_argument("--heads", type=_positive_int, default=None,
                 help="medusa, clover, clover2: heads (tree depth, default 4); hidden-transfer: transfers (tree depth, "
                 "default 4); eagle3: training-time-test steps (default 7); eagle: not used")
  t.add_argument("--weight-decay", type=float, default=None,
                 help="AdamW's weight decay (default: eagle, clover2 0.01, as their public trainers; others 0)")
  t.add_argument("--targets", default="full", choices=["full", "top8"],
                 help="eagle, eagle3, clover2 soft targets: the full softmax recomputed from the stored hidden "
                 "states (default, as the public trainers) or the stored top-8 probabilities (the earlier recipe)")
  t.add_argument("--own-head", action=argparse.BooleanOptionalAction, default=None,
                 help="eagle3: train its own draft-vocabulary head, started from the target's rows (default), "
                 "or score with the target's frozen rows (--no-own-head); parallelspec: on EAGLE-3's host (fused "
                 "captured layers, its own head, cross-entropy only; default) or on EAGLE-1's (--no-own-head)")
  t.add_argument("--draft-vocab", type=int, default=4096, help="0: the full vocabulary")
  t.add_argument("--nodes", type=_positive_int, default=12, help="tree budget stored with the checkpoint")
  t.add_argument("--exit-layer", type=_positive_int, default=None, metavar="K",
                 help="early-exit, adadecode: the adapter reads the residual after the target's first K layers; "
                 "hidden-transfer: the pseudo states enter after them (required)")
  t.add_argument("--feature-batch-tokens", type=_positive_int, default=4096)
  t.add_argument("--eval-every", type=_positive_int, default=500, help="held-out evaluation every N steps (and at the end)")
  t.add_argument("--max-seconds", type=float, default=None,
                 help="stop early after this long training (checkpointed; rerun without it to continue)")
  t.add_argument("--resume", action="store_true", help="continue a run in OUT (also what rerunning does)")
  t.add_argument("--overwrite", action="store_true", help="discard a run in OUT and start again")
  t.add_argument("--no-progress", action="store_true")
  t.add_argument("--features", default="disk", choices=["disk", "online"],
                 help="disk: the target's features computed once and cached as .npz (default); online: computed by "
                 "the target's forward inside every training step, nothing written (clover, clover2, eagle, eagle3)")
  _add_parallel_args(t, "train data-parallel over a device mesh: the batch over 'data'; the target (answers, "
                     "features) sharded as decoding shards it; with --coordinator over several processes")
  _add_model_args(t)
  return parser


