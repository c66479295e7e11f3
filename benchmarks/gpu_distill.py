"""Self-distillation answers generated on a lent GPU (the long part of drafter training data).

  prep (here, CPU): python benchmarks/gpu_distill.py prep N_TRAIN N_HELDOUT
      encodes the train prompts (chat template) to .gpu_carry/prompts.jsonl and splits the default
      GGUF into two parts (the device tool carries at most 64 MiB a call).
  run (device):     python benchmarks/gpu_distill.py run GGUF OUT_JSONL SECONDS
      greedy answers (float32, 256 tokens) with the same compiled generator `specjax train` uses on
      the CPU, appended to OUT_JSONL until SECONDS have passed.
The CPU command `specjax train --data distill` produces the same file (slower) when no GPU is lent.
"""
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import specjax  # noqa: E402
from specjax.train import data  # noqa: E402


def prep(n_train, n_held):
  import specjax.io as sio
  t = specjax.load("default")
  recs = data.training_prompts()
  items = data.encode(t, data.select(recs, n_train, heldout=False) + data.select(recs, n_held, heldout=True))
  d = pathlib.Path(".gpu_carry")
  d.mkdir(exist_ok=True)
  with open(d / "prompts.jsonl", "w") as f:
    for it in items:
      f.write(json.dumps({"id": it["id"], "prompt": it["prompt"]}) + "\n")
  raw = sio.default_model_path().read_bytes()
  half = len(raw) // 2
  (d / "part_a").write_bytes(raw[:half])
  (d / "part_b").write_bytes(raw[half:])
  print(len(items), "prompts;", len(raw), "model bytes")


def run(gguf, out, seconds):
  t0 = time.time()
  t = specjax.load(gguf)
  items = [json.loads(l) for l in open(".gpu_carry/prompts.jsonl")]
  data.sequences(t, items, pathlib.Path(out), mode="distill", batch_size=128, deadline=t0 + float(seconds))


if __name__ == "__main__":
  {"prep": lambda: prep(int(sys.argv[2]), int(sys.argv[3])), "run": lambda: run(*sys.argv[2:5])}[sys.argv[1]]()
