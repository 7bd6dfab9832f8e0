# Two GPUs (kind nvidia-h100-x2, carrying .whl/b after .whl/a): NCCL weight-sync smoke test,
# SGLang on GPU 1, trainer on GPU 0; ends within ~8 min even on a hang. MODE=old-env reproduces
# the 2026-11-27 hang (NCCL_CUMEM_ENABLE mismatch) for an A/B.
source bench/device/env.sh || exit 1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m 2>/dev/null | head -4
FLAG=""; [ "${MODE:-}" = old-env ] && FLAG=--old-env
timeout -k 10 ${PROBE_TIMEOUT:-470} python bench/device/nccl_probe.py $FLAG --out "$OUT/nccl_probe${MODE:+_$MODE}.json" \
  > "$OUT/nccl_probe${MODE:+_$MODE}.log" 2>&1
echo "probe rc=$?"
grep -E "^\[..:..:.. |NCCL push|NCCL weight group|watchdog|Error|error" "$OUT/nccl_probe${MODE:+_$MODE}.log" | tail -40
tail -c 200000 /tmp/nccl-probe/sglang_server.log > "$OUT/sglang_server${MODE:+_$MODE}.log" 2>/dev/null
grep -E "NCCL INFO .*(via|cuMem|CUMEM)|init custom process group|Failed" /tmp/nccl-probe/sglang_server.log | tail -8
exit 0
