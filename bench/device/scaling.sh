#!/usr/bin/env bash
# Issue 8 scaling table, one GPU count per command, on the largest machine of the hold
# (nvidia-h100-x4 for all three rows; carrying .whl/b and .carry after .whl/a):
#   GPUS=1 bash bench/device/scaling.sh   trainer + SGLang share GPU 0 (ipc)
#   GPUS=2 bash bench/device/scaling.sh   trainer GPU 0, SGLang GPU 1 (nccl)
#   GPUS=4 bash bench/device/scaling.sh   3 trainer ranks (torchrun, FSDP2) on GPUs 0-2, SGLang GPU 3 (nccl)
# Shape L (8 prompts x 8 samples x 512 tokens, random full-size 0.5B, synthetic reward so every step
# trains), STEPS steps (default 20). Each command stays under ~8 min; the medians come from
# bench/summarize.py (steps after the first 2). Writes $OUT/scaling_<GPUS>gpu.{log,json} and metrics.
# TRAINERS=K (GPUS=4 only): K torchrun ranks, SGLang on the other 4-K GPUs (default K=3).
# EXTRA="--set k=v ..." is appended to the command (e.g. a rollout.server_args override); TAG=x names
# the run scale<N>x (an A/B beside the table row; scaling_report.py reads only metrics_scale<N>.jsonl).
source bench/device/env.sh || exit 1
N=${GPUS:?set GPUS=1, 2 or 4}
STEPS=${STEPS:-20}
CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((N - 1)))
export CUDA_VISIBLE_DEVICES
RUN=/tmp/runs/bench/scale${N}${TAG:-}
ARGS=(train --config bench/configs/random-0.5b.yaml --set "trial_name=scale${N}${TAG:-}" --set output_dir=/tmp/runs
      --set "trainer.max_steps=$STEPS" ${EXTRA:-})
if [ "$N" -eq 1 ]; then
  CMD=(python bench/grpo_bench.py "${ARGS[@]}")
elif [ "$N" -eq 2 ]; then
  CMD=(python bench/grpo_bench.py "${ARGS[@]}" --set rollout.gpus=1)
else
  K=${TRAINERS:-$((N - 1))}  # trainer ranks; SGLang gets the other N-K GPUs (one server each by default)
  CMD=(python -m torch.distributed.run --standalone --nproc_per_node "$K" bench/grpo_bench.py "${ARGS[@]}"
       --set "rollout.gpus=$((N - K))")
fi
echo "== $N GPU(s): CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES ${CMD[*]}"
timeout -k 20 "${RUN_TIMEOUT:-470}" "${CMD[@]}" > "$OUT/scaling_${N}gpu.log" 2>&1
echo "rc=$?"
grep -E "run /tmp|transport|memory plan|step [0-9]+/|Error|error" "$OUT/scaling_${N}gpu.log" | tail -8
cp "$RUN/metrics.jsonl" "$OUT/metrics_scale${N}${TAG:-}.jsonl" 2>/dev/null
tail -c 100000 "$RUN/sglang_server.log" > "$OUT/sglang_scale${N}${TAG:-}.log" 2>/dev/null
mkdir -p "/tmp/scaling/scale${N}${TAG:-}" && cp "$RUN/metrics.jsonl" "/tmp/scaling/scale${N}${TAG:-}/" 2>/dev/null
python bench/summarize.py /tmp/scaling --json "$OUT/scaling_${N}gpu.json" | tail -4
exit 0
