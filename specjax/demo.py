"""`make demo`: speculative generation on the default model, with speed beside the baseline.

    python -m specjax.demo [--drafters pld,medusa] [--max-new-tokens 128] [PROMPT]
"""
from __future__ import annotations

import argparse

import specjax

PROMPT = ("Here is a short text. Rewrite it with better grammar, keeping every fact:\n"
          "the lighthouse keeper, he walk every night up the 112 stairs to light the lamp. "
          "the ships on the sea sees the light and they knows the rocks is near.")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("prompt", nargs="?", default=PROMPT)
  ap.add_argument("--drafters", default="pld,medusa", help="comma-separated; medusa uses the shipped checkpoint")
  ap.add_argument("--max-new-tokens", type=int, default=128)
  a = ap.parse_args(argv)
  print("loading SmolLM2-135M-Instruct (float32) ...", flush=True)
  target = specjax.load("default")
  base = specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens)
  runs = {d: specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens, drafter=d)
          for d in a.drafters.split(",") if d}
  first = next(iter(runs))
  print(f"\nprompt: {a.prompt}\n\nanswer ({first}):\n{runs[first].texts[0]}\n")
  print(f"autoregressive: {base.tokens_per_s:6.1f} tokens/s  ({base.new_tokens[0]} tokens, "
        f"{base.target_forwards[0]} target forwards, compile {base.compile_s:.1f} s)")
  for d, g in runs.items():
    print(f"{d:>14}: {g.tokens_per_s:6.1f} tokens/s  ({g.new_tokens[0]} tokens, {g.target_forwards[0]} target "
          f"forwards, tau {g.tau[0]:.2f}, compile {g.compile_s:.1f} s): speedup "
          f"{g.tokens_per_s / base.tokens_per_s:.2f}x, output identical to autoregressive: {g.token_ids == base.token_ids}")


if __name__ == "__main__":
  main()
