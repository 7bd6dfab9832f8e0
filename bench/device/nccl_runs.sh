# Two GPUs (kind nvidia-h100-x2): doctor, then `grpo train` with the trainer on GPU 0 and SGLang on
# GPU 1, weights over NCCL (transport auto), 20 steps at shape L (carrying .whl/b and .carry).
source bench/device/env.sh || exit 1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -m gsm8k_grpo doctor --preset 1hour --json > "$OUT/doctor_2gpu.json"; echo "doctor rc=$?"
python -m gsm8k_grpo doctor --preset 1hour 2>&1 | grep -E "nccl|cuda_ipc|transport|gpu |ok,|fail" | head -20
STEPS=${STEPS:-20} TRANSPORTS=auto bash bench/device/train_runs.sh
exit 0
