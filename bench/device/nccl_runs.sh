# Two GPUs (kind nvidia-h100-x2): doctor, then `grpo train` with the trainer on GPU 0 and SGLang on
# GPU 1, weights over NCCL (transport auto), 20 steps at shape L (carrying .whl/b and .carry).
source bench/device/env.sh || exit 1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -m gsm8k_grpo doctor --preset 1hour --json > "$OUT/doctor_2gpu.json"; echo "doctor rc=$?"
python -c "import json; d=json.load(open('$OUT/doctor_2gpu.json')); [print(c['status'], c['name'], c['detail'][:150]) for c in d['checks']]"
# 2026-11-27: the first NCCL push hung here (no log came back); keep the NCCL log for the next try.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
STEPS=${STEPS:-20} RUN_TIMEOUT=${RUN_TIMEOUT:-300} TRANSPORTS=auto bash bench/device/train_runs.sh
exit 0
