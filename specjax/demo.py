"""`make demo`: speculative generation on the default model, with speed beside the baseline.

    python -m specjax.demo [--drafters pld,medusa] [--max-new-tokens 128] [--dtype bfloat16] [PROMPT]
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
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="weights' dtype; bfloat16 makes trees cheap on CPUs with AMX (README)")
  a = ap.parse_args(argv)
  print(f"loading SmolLM2-135M-Instruct ({a.dtype}) ...", flush=True)
  target = specjax.load("default", dtype=a.dtype)
  base = specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens, time_prefill=True)
  runs = {d: specjax.generate(target, [a.prompt], max_new_tokens=a.max_new_tokens, drafter=d, time_prefill=True)
          for d in a.drafters.split(",") if d}
  first = next(iter(runs))
  print(f"\nprompt: {a.prompt}\n\nanswer ({first}):\n{runs[first].texts[0]}\n")
  print("tokens/s: whole call (prefill included) and decoding alone; prefill: the prompt's forward, time to "
        "first token less one step")
  print(f"autoregressive: {base.tokens_per_s:6.1f} tokens/s, {base.decode_tokens_per_s:6.1f} decoding  "
        f"({base.new_tokens[0]} tokens, {base.target_forwards[0]} target forwards, prefill {base.prefill_s:.2f} s, "
        f"compile {base.compile_s:.1f} s)")
  for d, g in runs.items():
    print(f"{d:>14}: {g.tokens_per_s:6.1f} tokens/s, {g.decode_tokens_per_s:6.1f} decoding  ({g.new_tokens[0]} "
          f"tokens, {g.target_forwards[0]} target forwards, tau {g.tau[0]:.2f}, prefill {g.prefill_s:.2f} s, "
          f"compile {g.compile_s:.1f} s): speedup {g.tokens_per_s / base.tokens_per_s:.2f}x, output identical "
          f"to autoregressive: {g.token_ids == base.token_ids}")


if __name__ == "__main__":
  main()
