#!/usr/bin/env bash
# Drafter training on a lent GPU: the same `specjax train` command as on the CPU, with more data and
# steps. Expects (see BENCHMARKS.md, "Training the shipped checkpoint (on a lent GPU)"): the default
# GGUF as $KEEP/part_a (left in /tmp by an earlier call on the same machine) + .gpu_carry/part_b (the
# device tool carries at most 64 MiB a call), optionally .gpu_carry/extra.tgz holding answers/ (shards from
# benchmarks/gpu_distill.py run on this machine; data/answers/ of the checkout is read too), and the gguf
# wheel in .whl/. Prompts: the mix shipped with specjax.
#
# Usage: BUDGET=SECONDS benchmarks/gpu_train.sh "NAME TRAIN-ARGS..." ["NAME TRAIN-ARGS..." ...]
#   e.g. "eagle3 --drafter eagle3 --max-prompts 8000 --steps 2000 --batch 32 --max-seconds 200"
# Runs one after another, each cut (by `timeout`) so that the whole script ends within BUDGET seconds;
# each run's checkpoint, log and output land in $OUT as they finish.
set -uo pipefail
KEEP=${KEEP:-/tmp/keep}; BUDGET=${BUDGET:-540}
OUT=${OUT:-bench_out/gpu_train}; mkdir -p "$OUT"
END=$(( $(date +%s) + BUDGET ))
W=/tmp/sjtrain; mkdir -p $W
[ -f $W/m.gguf ] || cat $KEEP/part_a .gpu_carry/part_b > $W/m.gguf || exit 3
[ -d $W/answers ] || [ ! -f .gpu_carry/extra.tgz ] || tar xzf .gpu_carry/extra.tgz -C $W || exit 3
# Answers made on this machine (or carried) join those in data/answers/ (shards are named by content).
if [ -d $W/answers ]; then cp -rn data/answers/. $W/answers/ 2>/dev/null; export SPECJAX_ANSWERS=$W/answers; fi
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:$PWD SPECJAX_CACHE=$W/cache PYTHONUNBUFFERED=1
python3 -c "import jax; print(jax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for spec in "$@"; do
  set -- $spec; name=$1; shift
  left=$(( END - $(date +%s) - 10 ))
  if [ $left -lt 60 ]; then echo "$name: skipped, ${left} s left"; continue; fi
  s=$(date +%s)
  timeout $left python3 -m specjax.cli train --model $W/m.gguf \
    --heldout-prompts 100 --feature-batch-tokens 32768 --no-progress --out $W/runs/$name "$@" 2>&1 \
    | grep -v "^features:" | tee "$OUT/$name.out"
  echo "$name: wall $(( $(date +%s) - s )) s" | tee -a "$OUT/$name.out"
  cp $W/runs/$name/log.jsonl "$OUT/$name.log.jsonl" 2>/dev/null
  cp $W/runs/$name/*.safetensors "$OUT/" 2>/dev/null
done
ls -la "$OUT"
