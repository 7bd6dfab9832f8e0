#!/usr/bin/env bash
# One GPU, one device command: several `grpo train` variants at shape L (random full-size 0.5B,
# bench/configs/random-0.5b.yaml), each STEPS steps, one after another on the same warm machine.
#
#   VARIANTS="base fit24 saver overlap" STEPS=10 bash bench/device/variants.sh
#   SHAPE=S VARIANTS="base overlap" STEPS=9 bash bench/device/variants.sh   # at S = 8 prompts x 2 x 256
#
# Variants (name: the extra settings):
#   base     none (the ipc row; since 2026-12-03 that includes rollout.overlap, on by default with SGLang)
#   onpolicy rollout.overlap=false (what base was before 2026-12-03)
#   fit24    the 24 GB plan of memory.fit: rollout.mem_fraction=0.08, trainer.micro_batch_tokens=4096,
#            with the trainer capped at trainer.gpu_memory_fraction=0.25 (of 80 GB: must not OOM)
#   saver    rollout.enable_memory_saver=true (SGLang releases its memory during the update)
#   overlap  rollout.overlap=true (the next batch is generated during the update)
#   compile  trainer.compile=true (torch.compile of each decoder layer; grpo train's micro-batches change length
#            every step, so its recompiles count here, unlike in bench/profile_update.py's fixed shapes)
#   oncompile rollout.overlap=false trainer.compile=true: the update alone on the GPU (nothing generates beside
#            it), so its logged mfu is the update's own in grpo train (issue 21's MFU bar); compare with onpolicy
#   idle     SGLang's --sleep-on-idle (its idle scheduler otherwise spins one CPU thread at 100 %; the
#            update is launch-bound, bench/results/2026-11-27-h100-variants.md, so CPU may matter)
# A variant is started only while BUDGET (default 540) seconds minus MIN_LEFT (default 150) remain.
# Returns 3 files: $OUT/variants.json (medians per variant, bench/summarize.py), $OUT/variants.tgz
# (each variant's metrics.jsonl, the tail of its train log and of its SGLang log), $OUT/variants.log.
source bench/device/env.sh || exit 1
STEPS=${STEPS:-10}
BUDGET=${BUDGET:-540}
MIN_LEFT=${MIN_LEFT:-150}
ROOT=${ROOT:-/tmp/variants_${SHAPE:-L}}   # one folder per shape: S and L runs in one machine hold do not meet
case ${SHAPE:-L} in
  L) SHAPE_SET=() ;;
  S) SHAPE_SET=(--set rollout.n=2 --set rollout.max_new_tokens=256) ;;
  *) echo "SHAPE must be S or L, not ${SHAPE}"; exit 2 ;;
esac
mkdir -p "$ROOT/runs" "$ROOT/files"
# the data by its absolute path: a later call's tree sync removes the .carry link that env.sh made, and
# a chain started in an earlier call (alone.sh) would then find no .carry/gsm8k (session 13 lost one so)
DATA=${DATA:-/tmp/carry/gsm8k}
[ -d "$DATA" ] || DATA=.carry/gsm8k
declare -A SETS=(
  [base]=""
  [onpolicy]="rollout.overlap=false"
  [fit24]="rollout.mem_fraction=0.08 trainer.micro_batch_tokens=4096 trainer.gpu_memory_fraction=0.25"
  [saver]="rollout.enable_memory_saver=true"
  [overlap]="rollout.overlap=true"
  [compile]="trainer.compile=true"
  [oncompile]="rollout.overlap=false trainer.compile=true"
  [idle]="rollout.server_args=[--attention-backend,triton,--sampling-backend,pytorch,--grammar-backend,none,--sleep-on-idle]"
)
for V in ${VARIANTS:-base fit24 saver overlap}; do
  if [ -z "${SETS[$V]+x}" ]; then echo "unknown variant $V (valid: ${!SETS[*]})"; continue; fi
  LEFT=$((BUDGET - SECONDS))
  if [ "$LEFT" -lt "$MIN_LEFT" ]; then echo "== $V: skipped, ${LEFT}s left"; continue; fi
  ARGS=(--set "trial_name=$V" --set "output_dir=$ROOT/runs" --set "trainer.max_steps=$STEPS" --set "data.path=$DATA" "${SHAPE_SET[@]}")
  for kv in ${SETS[$V]}; do ARGS+=(--set "$kv"); done
  echo "== $V: ${SETS[$V]:-defaults} ($LEFT s left)"
  timeout -k 10 $((LEFT - 20)) python bench/grpo_bench.py train --config bench/configs/random-0.5b.yaml "${ARGS[@]}" \
    > "$ROOT/files/train_$V.log" 2>&1
  echo "rc=$?"
  grep -E "healthy after|memory plan|Error|error:" "$ROOT/files/train_$V.log" | tail -3
  RUN=$ROOT/runs/bench/$V
  cp "$RUN/metrics.jsonl" "$ROOT/files/metrics_$V.jsonl" 2>/dev/null
  tail -c 60000 "$RUN/sglang_server.log" > "$ROOT/files/sglang_$V.log" 2>/dev/null
  grep -E "KV Cache is allocated|avail mem|memory_saver|Memory pool" "$RUN/sglang_server.log" 2>/dev/null | tail -3
done
python bench/summarize.py "$ROOT/runs/bench" --json "$OUT/variants.json" 2>&1 | tee "$OUT/variants.log"
tar -czf "$OUT/variants.tgz" -C "$ROOT/files" .
exit 0
