"""The shipped prompt mix restricted to some sources, as a prompts file for `specjax train --prompts` (ids kept,
so the held-out split and the stored answers match the mix's). The data ablation of issue 21 (BENCHMARKS.md)
trains on the sources the first checkpoints were trained on (GSM8K, GPTeacher, self-instruct) against the whole mix:

    python benchmarks/experiments/mix_subset.py gsm8k,gpteacher,selfinstruct,multi:selfinstruct runs/old_sources.jsonl
"""
import json
import sys

from specjax.train import data

prefixes, out = tuple(sys.argv[1].split(",")), sys.argv[2]
recs = [r for r in data.mix_prompts() if r.id.startswith(prefixes)]
with open(out, "w") as f:
  for r in recs:
    f.write(json.dumps({"id": r.id, "prompt": r.prompt}) + "\n")
print(f"{len(recs)} prompts -> {out}")
