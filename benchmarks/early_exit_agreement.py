"""Early-exit adapters on the default model: held-out top-1 agreement with the target's next token per
exit layer K, without an adapter (the plain exit head: final norm + full LM head) and with one trained
by `specjax train --drafter early-exit` (same data, same held-out positions).

    python benchmarks/early_exit_agreement.py --exits 8,12,16,20 --max-prompts 128 --heldout-prompts 40 \
        --steps 600 --runs runs/early-exit --out benchmarks/results/early_exit_agreement.json

Each K trains into RUNS/K (resumable; the checkpoint is RUNS/K/early-exit.safetensors). Features come
from the training cache; one capture of all the exit layers is reused by every K.
"""
import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import machine  # noqa: E402

import specjax  # noqa: E402
from specjax.train import prepare_data, train_drafter  # noqa: E402


def plain_exit_top1(t, held, col: int, chunk: int = 2048) -> float:
  """Held-out top-1 of the exit head with no adapter: argmax of logits(residual after layer K)."""
  hits = 0
  fn = jax.jit(lambda h: jnp.argmax(t.model.logits(h), -1))
  for s in range(0, len(held), chunk):
    h = jnp.asarray(np.asarray(held.layers[s:s + chunk, col], np.float32))
    hits += int((np.asarray(fn(h)) == held.top_ids[s:s + chunk, 0]).sum())
  return hits / len(held)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--exits", default="8,12,16,20")
  ap.add_argument("--max-prompts", type=int, default=128)
  ap.add_argument("--heldout-prompts", type=int, default=40)
  ap.add_argument("--steps", type=int, default=600)
  ap.add_argument("--draft-vocab", type=int, default=4096)
  ap.add_argument("--runs", default="runs/early-exit")
  ap.add_argument("--out", required=True)
  a = ap.parse_args()
  exits = tuple(int(k) for k in a.exits.split(","))
  t = specjax.load("default")
  capture = tuple(k - 1 for k in exits)
  _, held = prepare_data(t, max_prompts=a.max_prompts, heldout_prompts=a.heldout_prompts, full=False, capture=capture)
  rows = []
  for i, k in enumerate(exits):
    _, summary = train_drafter(t, drafter="early-exit", exit_layer=k, out=pathlib.Path(a.runs) / str(k),
                               max_prompts=a.max_prompts, heldout_prompts=a.heldout_prompts, steps=a.steps,
                               eval_every=a.steps, draft_vocab=a.draft_vocab, progress=False)
    rows.append(dict(exit_layer=k, heldout_positions=len(held), plain_top1=plain_exit_top1(t, held, i),
                     adapter_top1=summary["top1"][0], adapter_top5=summary["top5"][0], draft_vocab=a.draft_vocab,
                     vocab_coverage=summary["vocab_coverage"], steps=a.steps, train_prompts=a.max_prompts))
    print(json.dumps(rows[-1]), flush=True)
  pathlib.Path(a.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
