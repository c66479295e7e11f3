"""`make demo`: speculative generation on the default model, with speed beside the baseline.

    python -m specjax.demo [--drafter pld] [--max-new-tokens 128] [PROMPT]
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
  ap.add_argument("--drafter", default="pld")
  ap.add_argument("--max-new-tokens", type=int, default=128)
  a = ap.parse_args(argv)
  print("loading SmolLM2-135M-Instruct (float32) ...", flush=True)
  target = specjax.load("default")
  base = specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens)
  spec = specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens, drafter=a.drafter)
  print(f"\nprompt: {a.prompt}\n\nanswer ({a.drafter}):\n{spec.texts[0]}\n")
  print(f"autoregressive: {base.tokens_per_s:6.1f} tokens/s  ({base.new_tokens[0]} tokens, "
        f"{base.target_forwards[0]} target forwards, compile {base.compile_s:.1f} s)")
  print(f"{a.drafter:>14}: {spec.tokens_per_s:6.1f} tokens/s  ({spec.new_tokens[0]} tokens, "
        f"{spec.target_forwards[0]} target forwards, tau {spec.tau[0]:.2f}, compile {spec.compile_s:.1f} s)")
  print(f"speedup {spec.tokens_per_s / base.tokens_per_s:.2f}x; output identical to autoregressive: "
        f"{spec.token_ids == base.token_ids}")


if __name__ == "__main__":
  main()
