# One H100: doctor, weight-sync benchmark + freshness check (carrying .whl/b and .carry).
source bench/device/env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import sglang, torch, transformers; print('sglang', sglang.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
python -m gsm8k_grpo doctor --preset 1hour --json > "$OUT/doctor_1gpu.json"; echo "doctor rc=$?"
python -m gsm8k_grpo doctor --preset 1hour 2>&1 | tail -25
timeout 420 python bench/gpu_transports.py --out "$OUT/transports.json" 2>&1 | tee "$OUT/transports.log" | grep -v "^\[2026" | tail -5
grep -h "^\[" "$OUT/transports.log" | tail -8
[ -f /tmp/bench-transports/sglang_server.log ] && tail -c 200000 /tmp/bench-transports/sglang_server.log > "$OUT/sglang_server.log"
exit 0
