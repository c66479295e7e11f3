#!/usr/bin/env bash
# Drafter training on a lent GPU: the same `specjax train` command as on the CPU, with more data and
# steps. Expects (see BENCHMARKS.md, "Training the shipped drafters"): the default GGUF as
# $KEEP/part_a + .gpu_carry/part_b (the device tool carries at most 64 MiB a call), and
# $KEEP/extra.tgz holding train-prompts/ and distill.jsonl (answers from benchmarks/gpu_distill.py).
# Usage: benchmarks/gpu_train.sh MAX_PROMPTS STEPS BATCH   (results in $OUT)
set -uo pipefail
KEEP=${KEEP:-/tmp/keep}
N=${1:-8000}; STEPS=${2:-4000}; BATCH=${3:-1024}; SMALL_N=${SMALL_N:-1000}; SMALL_STEPS=${SMALL_STEPS:-1000}
OUT=${OUT:-bench_out/gpu_train}; mkdir -p "$OUT"
W=/tmp/sjtrain; mkdir -p $W
[ -f $W/m.gguf ] || cat $KEEP/part_a .gpu_carry/part_b > $W/m.gguf || exit 3
tar xzf $KEEP/extra.tgz -C $W || exit 3
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:$PWD SPECJAX_CACHE=$W/cache PYTHONUNBUFFERED=1
train() {  # NAME extra-args...
  local name=$1; shift
  local s=$(date +%s)
  python3 -m specjax.cli train --model $W/m.gguf --prompts $W/train-prompts --sequences $W/distill.jsonl \
    --heldout-prompts 100 --feature-batch-tokens 32768 --no-progress --out $W/runs/$name "$@" 2>&1 | grep -v "^features:"
  echo "$name wall $(( $(date +%s) - s )) s"
  cp $W/runs/$name/log.jsonl "$OUT/$name.log.jsonl" 2>/dev/null
  tar czf "$OUT/runs.tgz" -C $W/runs $(cd $W/runs && ls -d */*.safetensors */log.jsonl */settings.json 2>/dev/null)
}
train medusa --max-prompts $N --steps $STEPS --batch $BATCH --draft-vocab 8192
cp $W/runs/medusa/medusa.safetensors "$OUT/" 2>/dev/null
for V in 4096 16384 0; do train medusa-v$V --max-prompts $N --steps $STEPS --batch $BATCH --draft-vocab $V; done
for D in distill teacher; do train small-$D --data $D --max-prompts $SMALL_N --steps $SMALL_STEPS --batch 512 --draft-vocab 8192; done
ls -la "$OUT"
