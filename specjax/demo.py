"""`make demo`: speculative generation on the default model, with speed beside the baseline, and why a drafter
does or does not pay on this machine.

    python -m specjax.demo [--drafters pld,eagle3] [--max-new-tokens 128] [--dtype bfloat16]
                           [--tree-budget auto|fixed] [PROMPT]

With --tree-budget auto (the default) each drafter's tree is sized for this machine from step costs measured
here (specjax/budget.py): a drafter pays only where it accepts more tokens per step than a step verifying its
tree costs in one-token steps, and that ratio is what the demo prints. The step costs are kept on disk
(budget.CostCache) and no call asks for prefill timing, so every program lands in JAX's persistent compilation
cache: a second run measures nothing and compiles nothing (tracing remains), nor does any later call with the same
shapes and settings.
"""
from __future__ import annotations

import argparse
import dataclasses

import specjax

PROMPT = ("Here is a short text. Rewrite it with better grammar, keeping every fact:\n"
          "the lighthouse keeper, he walk every night up the 112 stairs to light the lamp. "
          "the ships on the sea sees the light and they knows the rocks is near.")


def drafter(name: str):
  """The drafter `name`; a trained one offers auto its two smallest recorded budgets only: each budget auto
  measures is one more compile (20-45 s each for eagle3 on a 2-core CPU), and the larger trees pay only where
  verification is nearly free (an accelerator, where specjax.generate(..., tree_budget="auto") tries them all)."""
  from specjax.drafters import registry
  d = registry.make(name)
  if not d.heldout_tau:
    return d
  kept = sorted(d.budgets(), key=lambda b: dataclasses.replace(d, **b[0]).num_nodes)[:2]
  keys = {"/".join(str(opts[k]) for k in d.budget_keys) for opts, _ in kept}
  return dataclasses.replace(d, heldout_tau=tuple(kv for kv in d.heldout_tau if kv[0] in keys))


def why(name: str, d, g) -> str:
  """One line: the measured cost of a step at the budget drafter `d` would run, in one-token steps, against the
  tokens it accepts per step. g: its Generation with tree_budget="auto" (its budget_ms)."""
  from specjax import budget
  ms = g.budget_ms
  if "none" not in ms:
    return f"{name}: run with --tree-budget auto to measure what a step costs here"
  cands = {c.label: c for c in budget.candidates(d)}
  # The budget it ran, or (auto chose plain decoding) the cheapest tree it could have run.
  label = g.budget if g.budget != "none" else min((k for k in ms if k != "none"), key=lambda k: cands[k].nodes)
  c = cands.get(label)
  if c is None:           # options other than the measured ones: nothing recorded to compare with
    return f"{name}: a step at {label} costs {ms[label] / ms['none']:.2f}x a one-token step on this machine (measured)"
  tau = g.tau[0] if g.budget != "none" else c.tau
  where = "on this prompt" if g.budget != "none" else "held out in training" if d.heldout_tau else "recorded"
  ran = "" if g.budget != "none" else "; auto ran plain decoding instead"
  ratio = ms[label] / ms["none"]
  return (f"{name}: a step verifying {c.nodes} tokens ({label}) costs {ratio:.2f}x a one-token step on this machine "
          f"(measured {ms[label]:.0f} vs {ms['none']:.0f} ms), and it accepts {tau:.2f} tokens per step ({where}): "
          f"it pays only where tokens per step exceed that cost{ran}")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("prompt", nargs="?", default=PROMPT)
  ap.add_argument("--drafters", default="pld,eagle3",
                  help="comma-separated; trained drafters use the checkpoints shipped for the default model")
  ap.add_argument("--max-new-tokens", type=int, default=128)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="weights' dtype; bfloat16 makes trees cheap on CPUs with AMX (README)")
  ap.add_argument("--tree-budget", default="auto", choices=("auto", "fixed"),
                  help="auto: each drafter's tree sized from step costs measured on this machine")
  a = ap.parse_args(argv)
  print(f"loading SmolLM2-135M-Instruct ({a.dtype}) ...", flush=True)
  target = specjax.load("default", dtype=a.dtype)
  base = specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens)
  runs, drafters = {}, {d: drafter(d) for d in a.drafters.split(",") if d}
  for name, d in drafters.items():
    print(f"{name}: compiling and measuring (the first run only) ...", flush=True)
    runs[name] = specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens, drafter=d,
                                  tree_budget=a.tree_budget)
  # Plain decoding again (no compile): the baseline is the better of its two runs, so a burst of load during one
  # run does not show as a speedup; a drafter that auto sent to plain decoding ran this same program.
  again = specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens)
  base_rate = max(base.tokens_per_s, again.tokens_per_s)
  speedup = {d: g.tokens_per_s / base_rate for d, g in runs.items() if g.budget != "none"}
  best = max(speedup, key=speedup.get, default=None)
  print(f"\nprompt: {a.prompt}\n\nanswer:\n{base.texts[0]}\n")
  print("tokens/s of the whole call, prompt included; budget: the tree each drafter ran (tree_budget "
        f"{a.tree_budget!r}; 'none': plain decoding)")
  print(f"{'autoregressive':>14}: {base_rate:6.1f} tokens/s  ({base.new_tokens[0]} tokens, "
        f"{base.target_forwards[0]} target forwards, compile {base.compile_s:.1f} s)")
  for d, g in runs.items():
    gain = f"speedup {speedup[d]:.2f}x" if d in speedup else "plain decoding: no drafting pays here"
    print(f"{d:>14}: {g.tokens_per_s:6.1f} tokens/s  ({g.new_tokens[0]} tokens, {g.target_forwards[0]} target forwards, "
          f"tau {g.tau[0]:.2f}, budget {g.budget}, compile {g.compile_s:.1f} s): {gain}, "
          f"output identical to autoregressive: {g.token_ids == base.token_ids}")
  print()
  for d, g in runs.items():
    if speedup.get(d, 0.0) < 1.0:
      print("does not pay here: " + why(d, drafters[d], g))
  if best is not None and speedup[best] >= 1.0:
    print(f"pays most here: {best}, {speedup[best]:.2f}x plain decoding (tau {runs[best].tau[0]:.2f}, budget "
          f"{runs[best].budget}); use it with specjax.generate(..., drafter={best!r}, tree_budget='auto')")
  else:
    print("no drafter pays on this machine at batch 1: plain decoding is fastest here (see the lines above)")

if __name__ == "__main__":
  main()
