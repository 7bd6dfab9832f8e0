#!/usr/bin/env bash
# Optional: warm SGLang's JIT caches (tvm-ffi/nvcc + Triton kernels, ~80 s cold) in the background
# while the model parts are carried (shared/models/README.md, section 5).
#   bash bench/device/learn/warm.sh start    # in the command that installs SGLang; returns at once
#   bash bench/device/learn/warm.sh stop     # before the first real server (baseline/train/final call it)
#   bash bench/device/learn/warm.sh status
# start: a detached (setsid) SGLang server on 127.0.0.1:30001 serving a RANDOM bf16 model of the
# Qwen2.5-0.5B shapes (built from the shipped config; the real model's shapes are the same bar the
# untied lm_head), with the flags of config.yaml. Everything it needs is copied to /tmp/learn/warm
# first, because the repo copy of this command may be gone when the next command arrives.
# stop: waits until that server is healthy (its kernels are then all cached; WARM_WAIT s at most,
# default 150), then kills its process group by the pid recorded at start. No-op when none runs.
source bench/device/env.sh || exit 1
set -u
source bench/device/learn/common.sh || exit 1
W=$STATE/warm
PORT=${WARM_PORT:-30001}

# our server: the recorded pid is alive and its command line names $W/ (run.sh, then the server)
alive() {
  local pid
  pid=$(cat "$W/pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$W/"
}
healthy() { "$PY" -c "import sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:$PORT/health', timeout=3).status == 200 else 1)" 2>/dev/null; }

case "${1:-}" in
start)
  if alive; then echo "[warm] already running (pid $(cat "$W/pid"))"; exit 0; fi
  mkdir -p "$W"
  cp src/gsm8k_grpo/assets/qwen2.5-0.5b-instruct/config.json "$W/config.json"
  cat > "$W/run.sh" <<EOF
# written by bench/device/learn/warm.sh: build a random model once, then become the SGLang server
echo \$\$ > "$W/pid"    # this pid leads its own session/group (setsid) and execs into the server
cd "$W" || exit 1
t0=\$SECONDS
if [ ! -f "$W/model/config.json" ]; then
  "$PY" - <<'PYEOF' || exit 1
import shutil, torch
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.from_pretrained("$W")
torch.manual_seed(0)
m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
shutil.rmtree("$W/model.tmp", ignore_errors=True)
m.save_pretrained("$W/model.tmp")
shutil.move("$W/model.tmp", "$W/model")
PYEOF
fi
echo "[warm] random model ready after \$((SECONDS - t0)) s; starting SGLang on port $PORT"
exec "$PY" -m sglang.launch_server --model-path "$W/model" --skip-tokenizer-init --host 127.0.0.1 --port $PORT \
  --mem-fraction-static 0.4 --attention-backend triton --sampling-backend pytorch --grammar-backend none
EOF
  # setsid: own session and process group (pgid == pid), so it outlives this command and stop() can
  # kill the whole group (scheduler + detokenizer children) by that one id
  rm -f "$W/pid"
  date +%s > "$W/started"
  setsid nohup bash "$W/run.sh" > "$W/warm.log" 2>&1 < /dev/null &
  for _ in $(seq 20); do [ -s "$W/pid" ] && break; sleep 0.1; done
  echo "[warm] started pid $(cat "$W/pid" 2>/dev/null || echo '?'), log $W/warm.log"
  ;;
stop)
  if ! [ -f "$W/pid" ]; then echo "[warm] none running"; exit 0; fi
  pid=$(cat "$W/pid")
  if alive; then
    waited=0
    while alive && ! healthy && [ "$waited" -lt "${WARM_WAIT:-150}" ]; do sleep 2; waited=$((waited + 2)); done
    since=$(( $(date +%s) - $(cat "$W/started" 2>/dev/null || date +%s) ))
    if healthy; then echo "[warm] healthy ($since s after start; waited $waited s here): JIT caches are warm"
    else echo "[warm] NOT healthy after $since s (waited $waited s): stopping it anyway"; fi
    kill -TERM -- "-$pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null
  else
    echo "[warm] pid $pid is not running (it exited; log tail below)"
  fi
  grep -E "random model ready|Capture|capture|fired up|ready to roll|Error|error" "$W/warm.log" 2>/dev/null | tail -8
  rm -f "$W/pid"
  ;;
status)
  if alive; then echo "[warm] running (pid $(cat "$W/pid")), healthy: $(healthy && echo yes || echo no)"
  else echo "[warm] not running"; fi
  tail -3 "$W/warm.log" 2>/dev/null
  ;;
*)
  echo "usage: bash bench/device/learn/warm.sh start|stop|status" >&2; exit 2 ;;
esac
exit 0
