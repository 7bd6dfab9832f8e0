#!/usr/bin/env bash
# Several learning trials at once on the one GPU (issue 20: >= 2 seeds of a configuration in one hold).
# A 0.5B run leaves an H200 mostly idle (decode-bound generation), so each trial is a detached chain
#   grpo train --preset PRESET --config bench/device/learn/config.yaml --set model.path=$MODEL --set seed=SEED ...
#   grpo eval --checkpoint <final> --all --config bench/device/learn/share.yaml --data $DATA
# with its own run dir, its own SGLang server (grpo picks free ports) and memory caps, that outlives the
# device command which started it (setsid); later commands poll it while the machine stays warm.
#
#   bash bench/device/learn/trials.sh start NAME PRESET SEED [KEY=VALUE ...]   returns after its step 1
#   bash bench/device/learn/trials.sh baseline [NAME [KEY=VALUE ...]]   the base model on the whole test split
#                                                    (returns when done); KEY=VALUE: a prompt (data.instruction,
#                                                    data.system_prompt), which a trial's eval also takes from its own
#   bash bench/device/learn/trials.sh hub            bench/device/hub_id.sh (issue 17), detached
#   bash bench/device/learn/trials.sh cards          the consumer-card chain (bench/device/cards.py), detached
#   bash bench/device/learn/trials.sh watch          bench/device/gpuwatch.py, detached: each trial's NVML peak
#                                                    (trainer + server) against its gpu_memory_limit
#   bash bench/device/learn/trials.sh until SECONDS PATTERN FILE   until FILE holds PATTERN
#   bash bench/device/learn/trials.sh wait SECONDS   until every chain is done or SECONDS pass; prints
#                                                    progress; packs every result into $OUT/trials.tgz
#
# Memory caps per trial (SHARE_SET overrides them): since 2026-12-03 (session 9) trainer.gpu_memory_limit,
# which gives SGLang an absolute pool (--max-total-tokens, with --mem-fraction-static 0.9 only so that its
# memory profile passes) and caps the trainer's allocator at the rest: each trial is planned as if it had a
# 24 GiB card of its own (fit() then sets smaller micro-batches, which change float summation order and
# speed, not the update). What follows is why the old way failed.
# SGLang 0.5.17 sizes its KV pool as
#   (memory free after it loaded its weights) - (memory free before) x (1 - mem_fraction)
# (kv_cache_configurator._profile_available_bytes): whatever ANY process allocates while a server loads
# is charged to that server. Started together (2026-12-03), four trials' trainers took the pool of every
# server but one ("Loaded weights leave no GPU memory for the KV cache ... Raise --mem-fraction-static
# above 0.087"; bench/results/2026-12-03-h200-trials/failed/). So `start` staggers: it returns once the
# trial has logged step 1 (its server sized, its trainer at its peak), and `baseline` once it is done.
# 0.15 of the free memory is ~20 GiB for the first server (weights 1 GiB; a 1hour batch needs ~0.5 GiB
# of KV). The trainer runs micro-batches of 4,096 tokens (peak 14.9 GiB at the 1hour shapes,
# bench/results/2026-11-27-h100-variants.md) under a cap of 0.2 of the card. The micro-batch size
# changes no number of the update but float summation order (the loss is summed over micro-batches
# against one token count per batch).
# Trials that share the GPU slow each other: judge their time budget by the step count, not their wall clock.
source bench/device/env.sh || exit 1
set -u
source bench/device/learn/common.sh || exit 1
T=${TRIALS_DIR:-/tmp/trials}
mkdir -p "$T"
EVAL_CONFIG=${EVAL_CONFIG:-$LEARN_DIR/share.yaml}   # config.yaml with rollout.mem_fraction 0.15
# 24 GiB each: five trials fit the H200 beside nothing else (the 630M Coder model's full fine-tuning is
# refused at 16 GiB by the plan since session 9). One checkpoint, the final one: seven trials with two
# checkpoints of 9 GB each filled the machine's 64 GiB disk in session 9.
SHARE_SET=${SHARE_SET-"trainer.gpu_memory_limit=24GiB checkpoint.every=0 checkpoint.keep_last=1"}

STAGGER_S=${STAGGER_S:-0}   # at most this long for a trial's step 1 (0: do not wait; the limit needs no stagger)

settle() {  # settle PATTERN FILE: until FILE holds PATTERN or STAGGER_S pass
  [ "$STAGGER_S" = 0 ] && return 0
  local end=$((SECONDS + STAGGER_S))
  until grep -q -- "$1" "$2" 2>/dev/null || [ "$SECONDS" -ge "$end" ]; do sleep 3; done
  echo "[trials] after $((STAGGER_S - end + SECONDS)) s: $(grep -m1 -o -- "$1.*" "$2" 2>/dev/null | cut -c1-60)"
}

# every chain runs from a copy of the tree that later calls' syncs do not touch (env.sh, tree_snapshot)
TREE=${TRIALS_TREE:-/tmp/trials-tree}
detach() {  # detach NAME SCRIPT: run SCRIPT in its own session; its log in $T/NAME/chain.log
  tree_snapshot "$TREE" || { echo "[trials] could not copy the tree to $TREE" >&2; exit 1; }
  mkdir -p "$T/$1"
  printf '%s\n' "$2" > "$T/$1/chain.sh"
  setsid bash "$T/$1/chain.sh" > "$T/$1/chain.log" 2>&1 < /dev/null &
  echo "[trials] $1 started (pid $!)"
}

# eval_config DIR [KEY=VALUE ...]: the config a trial's (or a baseline's) eval reads: $EVAL_CONFIG, plus the
# prompt settings among KEY=VALUE (data.instruction, data.system_prompt), written to DIR/eval.yaml, so that a
# prompt-format trial is scored with the prompt it trained on, as `grpo eval --checkpoint` does by default
# with the run's own config. Values are read as `grpo train --set` reads them (config.parse_set).
eval_config() {
  local dir=$1 kv prompt=(); shift
  for kv in "$@"; do case $kv in data.instruction=*|data.system_prompt=*) prompt+=("$kv") ;; esac; done
  [ ${#prompt[@]} = 0 ] && { echo "$EVAL_CONFIG"; return 0; }
  mkdir -p "$dir"
  PYTHONPATH="$PWD/src:${PYTHONPATH:-}" "$PY" - "$EVAL_CONFIG" "$dir/eval.yaml" "${prompt[@]}" <<'PYEOF' || return 1
import sys
import yaml
from gsm8k_grpo.config import parse_set
src, dst, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = yaml.safe_load(open(src)) or {}
for kv in pairs:
    cfg.setdefault("data", {}).update(parse_set(kv)["data"])
with open(dst, "w") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
PYEOF
  echo "$dir/eval.yaml"
}

case "${1:-}" in
start)
  NAME=${2:?NAME}; PRESET=${3:?PRESET}; SEED=${4:?SEED}; shift 4
  need_model || exit 1
  sets=()
  # shellcheck disable=SC2206  # SHARE_SET is a word list on purpose; the trial's own KEY=VALUEs keep their spaces
  for kv in $SHARE_SET "seed=$SEED" "$@"; do sets+=(--set "$kv"); done
  D=$T/$NAME
  mkdir -p "$D"
  printf '%s\n' "$PRESET $SEED $SHARE_SET $*" > "$D/settings.txt"
  ECONF=$(eval_config "$D" "$@") || { echo "[trials] $NAME: could not write its eval config" >&2; exit 1; }
  detach "$NAME" "cd $TREE
source bench/device/env.sh
t0=\$SECONDS
$PY -m gsm8k_grpo train --preset $PRESET --config $LEARN_CONFIG --set model.path=$MODEL --set output_dir=$D/runs$(printf ' %q' "${sets[@]}") > $D/train.out 2>&1
echo \"train rc=\$? wall \$((SECONDS - t0)) s\" > $D/train.rc
FINAL=\$(sed -n 's/^final checkpoint: //p' $D/train.out)
[ -n \"\$FINAL\" ] || { echo 'no final checkpoint' > $D/done; exit 1; }
t0=\$SECONDS
$PY -m gsm8k_grpo eval --checkpoint \"\$FINAL\" $EVAL_SET --engine $EVAL_ENGINE --config $ECONF --data $DATA \
  --output $D/final_rows.jsonl --json > $D/final.json 2> $D/final.log
echo \"eval rc=\$? wall \$((SECONDS - t0)) s\" > $D/done"
  settle "step 1/" "$D/train.out"
  ;;
baseline)  # baseline [NAME [KEY=VALUE ...]]: NAME (default baseline) under the prompt that KEY=VALUE set
  need_model || exit 1
  BNAME=${2:-baseline}; shift $(( $# < 2 ? $# : 2 ))
  D=$T/$BNAME
  ECONF=$(eval_config "$D" "$@") || { echo "[trials] $BNAME: could not write its eval config" >&2; exit 1; }
  detach "$BNAME" "cd $TREE
source bench/device/env.sh
t0=\$SECONDS
$PY -m gsm8k_grpo eval --model $MODEL $EVAL_SET --engine $EVAL_ENGINE --config $ECONF --data $DATA \
  --output $D/baseline_rows.jsonl --json > $D/baseline.json 2> $D/baseline.log
echo \"eval rc=\$? wall \$((SECONDS - t0)) s\" > $D/done"
  settle "eval rc" "$D/done"
  ;;
hub)
  D=$T/hub
  mkdir -p "$D"
  detach hub "cd $TREE
OUT=$D TRAIN_TIMEOUT=900 EXTRA_SET='$SHARE_SET' bash bench/device/hub_id.sh > $D/hub.out 2>&1
echo \"hub rc=\$?\" > $D/done"
  ;;
cards)  # issue 22: the 8, 12, 16 and 24 GiB cards for the 630M Coder model, one after the other
  # The plans since session 11 are 24 GiB full and 12 GiB LoRA for this model (LoRA's SGLang term is 0.5 GiB
  # larger): the learning trials run them over whole runs (SHARE_SET's 24 GiB; LoRA trials with
  # trainer.gpu_memory_limit=12GiB), measured by `watch`. Here the rest: LoRA on a 16 GiB card (10 steps),
  # and the sizes the plan must refuse in one line before loading anything: full at 20 GiB, LoRA at 10 and 8.
  need_model || exit 1
  D=$T/cards
  mkdir -p "$D"
  C="$PY bench/device/cards.py --out $D --model $MODEL --config $LEARN_CONFIG"
  LORA="lora.rank=16 lora.alpha=32 optimizer.lr=2e-5"
  detach cards "cd $TREE
source bench/device/env.sh
$C full20 20GiB
$C lora10 10GiB $LORA
$C lora8 8GiB $LORA
$C lora16 16GiB $LORA checkpoint.keep_last=1
echo cards > $D/done"
  ;;
watch)
  [ -f "$T/gpuwatch.pid" ] && kill -0 "$(cat "$T/gpuwatch.pid")" 2>/dev/null && { echo "[trials] watch already runs"; exit 0; }
  setsid $PY bench/device/gpuwatch.py --trials "$T" > "$T/gpuwatch.log" 2>&1 < /dev/null &
  echo $! > "$T/gpuwatch.pid"
  echo "[trials] gpuwatch started (pid $!)"
  ;;
until)  # until SECONDS PATTERN FILE: return once FILE holds PATTERN (e.g. the hub run's training is done)
  deadline=$((SECONDS + ${2:?SECONDS}))
  until grep -q -- "${3:?PATTERN}" "${4:?FILE}" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; do sleep 5; done
  grep -- "$3" "$4" 2>/dev/null || echo "[trials] no '$3' in $4 after $2 s"; tail -n 3 "$4" 2>/dev/null
  ;;
wait)
  # a reader that stops early (`trials.sh wait N | head`) must not kill the packing below: with SIGPIPE
  # ignored a write to the closed pipe fails and the script goes on (session 15 lost a pack so)
  trap '' PIPE
  deadline=$((SECONDS + ${2:-0}))
  while :; do
    pending=0
    for d in "$T"/*/; do [ -f "$d/done" ] || pending=$((pending + 1)); done
    [ "$pending" = 0 ] || [ "$SECONDS" -ge "$deadline" ] && break
    sleep 10
  done
  for d in "$T"/*/; do
    n=$(basename "$d")
    step=$(grep -ohE "step +[0-9]+/[0-9]+" "$d"/runs/*/*/train.log 2>/dev/null | tail -n 1)
    echo "[$n] ${step:-no step yet} | $(cat "$d/train.rc" 2>/dev/null) | $(cat "$d/done" 2>/dev/null || echo running)"
    [ -f "$d/final.json" ] && show_json "$d/final.json"
    [ -f "$d/baseline.json" ] && show_json "$d/baseline.json"
    [ -f "$d/hub.out" ] && tail -n 4 "$d/hub.out" | sed 's/^/   /'
    for j in "$d"*.json; do [ -f "$j" ] && [ "${j##*/}" != final.json ] && [ "${j##*/}" != baseline.json ] && head -c 600 "$j" | tr -d '\n' && echo; done
    grep -hE "Error|Traceback|non-finite" "$d/train.out" "$d/chain.log" 2>/dev/null | tail -n 3 | sed 's/^/   ! /'
  done
  # everything small enough, in one file (the device returns at most 8)
  [ -f "$T/gpuwatch.json" ] && head -c 3000 "$T/gpuwatch.json" | tr -s ' \n' ' ' && echo
  (cd "$T" && { ls gpuwatch.json gpuwatch.log 2>/dev/null; for d in */; do
     ls "$d"runs/*/*/metrics.jsonl "$d"runs/*/*/train.log "$d"runs/*/*/config.yaml 2>/dev/null
     ls "$d"*.json "$d"*.jsonl "$d"*.yaml "$d"*.log "$d"*.out "$d"*.txt "$d"*.rc "$d"done "$d"*/*/*/metrics.jsonl 2>/dev/null
   done; } | tar -czf "$OUT/trials.tgz" -T - 2>/dev/null)
  ls -la "$OUT/trials.tgz"; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  ;;
*) echo "usage: trials.sh start NAME PRESET SEED [KEY=VALUE ...] | baseline | hub | cards | watch | until SECONDS PATTERN FILE | wait SECONDS" >&2; exit 2 ;;
esac
