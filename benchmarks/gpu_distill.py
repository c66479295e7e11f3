"""Self-distillation answers generated on a lent GPU, in the repository's format (specjax.train.answers).

  prep (here, CPU): python benchmarks/gpu_distill.py prep N_TRAIN N_HELDOUT
      encodes the first prompts of the shipped mix (chat template) to .gpu_carry/prompts.jsonl, leaving out
      those already answered under data/answers/<fingerprint>/, and splits the default GGUF into two parts
      (the device tool carries at most 64 MiB a call).
  run (device):     python benchmarks/gpu_distill.py run GGUF OUT_DIR SECONDS [BATCH]
      greedy answers (float32, 256 tokens) with the same compiled generator `specjax train` uses on the
      CPU, written as shards under OUT_DIR/<fingerprint>/a256/ until SECONDS have passed. Copy those
      shards into data/answers/<fingerprint>/a256/ here (shards are named by content: copying merges).
The CPU command `python -m specjax.train.answers` writes the same shards (slower) when no GPU is lent; an
H200 made 8300 answers in minutes before, so 50k+ prompts fit one call (the mix holds about 25k: raise
N_TRAIN to all of them, and mind the 30 MB cap of data/answers).
"""
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import specjax  # noqa: E402
from specjax.train import answers, data  # noqa: E402


def prep(n_train, n_held):
  import specjax.io as sio
  t = specjax.load("default")
  recs = data.training_prompts()
  items = data.encode(t, data.select(recs, n_held, heldout=True) + data.select(recs, n_train, heldout=False))
  have = answers.matching(items, answers.read(answers.directory(t.fingerprint, 256)))
  done = {r["id"] for r in have}
  d = pathlib.Path(".gpu_carry")
  d.mkdir(exist_ok=True)
  with open(d / "prompts.jsonl", "w") as f:
    for it in items:
      if it["id"] not in done:
        f.write(json.dumps({"id": it["id"], "prompt": it["prompt"]}) + "\n")
  raw = sio.default_model_path().read_bytes()
  half = len(raw) // 2
  (d / "part_a").write_bytes(raw[:half])
  (d / "part_b").write_bytes(raw[half:])
  print(len(items) - len(done), "prompts to answer,", len(done), "already stored;", len(raw), "model bytes")


def run(gguf, out, seconds, batch=128):
  t0 = time.time()
  t = specjax.load(gguf)
  items = [json.loads(l) for l in open(".gpu_carry/prompts.jsonl")]
  n = answers.generate(t, items, batch_size=int(batch), shard_size=max(1024, int(batch)), base=out,
                       deadline=t0 + float(seconds))
  print(f"{n} answers under {answers.directory(t.fingerprint, 256, out)}")


if __name__ == "__main__":
  {"prep": lambda: prep(int(sys.argv[2]), int(sys.argv[3])), "run": lambda: run(*sys.argv[2:6])}[sys.argv[1]]()
