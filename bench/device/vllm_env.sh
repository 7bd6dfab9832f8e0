# vllm_env.sh: SOURCE on the GPU machine from the repo root, once per call, carrying one part of
# .whl/vllm (built here by bench/device/vllm_wheels.sh). It gives the calls' shell vLLM 0.25.1 +
# TRL 1.16.0 on the machine's torch 2.11.0, beside SGLang's wheels:
#     call k:   carry [".whl/vllm/p01"]   source bench/device/vllm_env.sh          -> rc 3, "still to come: p02"
#     call k+1: carry [".whl/vllm/p02"]   source bench/device/vllm_env.sh && CMD   -> joins, installs, CMD
# Each call copies the files of the parts it carries to $VLLM_STAGE (/tmp/vwh), which lives while the
# machine is warm (30 s after a call returns: make the calls back to back). Once every file of MANIFEST
# is there it checks their sha256, joins the xz'd vllm wheel, unpacks it and installs all wheels with
# pip --no-index --no-deps into $VLLM_SITE (/tmp/vsite), once; sourcing it again only re-exports.
# Needs SGLang's wheels installed first in $SGL_SITE (/tmp/site: .whl/a + .whl/b through
# sglang-env.sh / bench/device/env.sh): vLLM imports pydantic, fastapi, starlette, pyzmq, msgspec,
# xgrammar, tvm-ffi, orjson, pybase64, ... from there.
# vLLM sees /tmp/site through $VLLM_SHARE (/tmp/vshare), a folder of links to everything in it except
# flashinfer (SGLang's 0.6.15.post1; vLLM 0.25.1 pins 0.6.13 and would run its autotuner and JIT on it),
# sglang, sgl_kernel and compressed_tensors; /tmp/site itself is taken off PYTHONPATH.
# transformers: SGLang's 5.12.1 + tokenizers 0.22.2 (the versions of the suite's TRL baseline run) by
# default; VLLM_TRANSFORMERS=machine leaves them out, so the machine's 5.17.0 + 0.23.2 are used.
# Returns 0 when ready, 3 while parts are missing, 1 on error. VLLM_ENV_VERIFY=0 skips the import check.
_ve_fail() { echo "[vllm-env] ERROR: $*" >&2; }
VLLM_STAGE=${VLLM_STAGE:-/tmp/vwh}
VLLM_SITE=${VLLM_SITE:-/tmp/vsite}
VLLM_SHARE=${VLLM_SHARE:-/tmp/vshare}
SGL_SITE=${SGL_SITE:-/tmp/site}
mkdir -p "$VLLM_STAGE"
_ve_here=""
for _ve_d in .whl/vllm/p[0-9][0-9]; do
  [ -f "$_ve_d/MANIFEST" ] || continue
  _ve_here="$_ve_here ${_ve_d##*/}"
  for _ve_f in "$_ve_d"/*; do
    _ve_b=${_ve_f##*/}
    if [ "$_ve_b" = MANIFEST ]; then cp "$_ve_f" "$VLLM_STAGE/MANIFEST"
    elif [ ! -f "$VLLM_STAGE/$_ve_b" ] || [ "$(stat -c %s "$_ve_f")" != "$(stat -c %s "$VLLM_STAGE/$_ve_b")" ]; then
      cp "$_ve_f" "$VLLM_STAGE/$_ve_b"
    fi
  done
done
if [ ! -f "$VLLM_STAGE/MANIFEST" ]; then
  _ve_fail "no part of .whl/vllm has arrived (carry .whl/vllm/p01 in this call; build the parts with bench/device/vllm_wheels.sh)"
  return 1 2>/dev/null || exit 1
fi
# files still missing, by part
_ve_missing=$(awk '$1=="file"{print $2, $5}' "$VLLM_STAGE/MANIFEST" | while read -r _p _n; do
  [ -f "$VLLM_STAGE/$_n" ] || echo "$_p"; done | sort -u | tr '\n' ' ')
if [ -n "$_ve_missing" ]; then
  echo "[vllm-env] staged${_ve_here:- nothing new} in $VLLM_STAGE; still to come: ${_ve_missing}(make the next call," \
       "carrying .whl/vllm/<part>, within 30 s)"
  return 3 2>/dev/null || exit 3
fi
_ve_stamp="$VLLM_SITE/.vllm-env-$(md5sum < "$VLLM_STAGE/MANIFEST" | cut -c1-12)"
if [ ! -f "$_ve_stamp" ]; then
  _ve_t0=$SECONDS
  echo "[vllm-env] all parts here; checking, joining, installing into $VLLM_SITE"
  if ! (cd "$VLLM_STAGE" && awk '$1=="file"{print $3 "  " $5}' MANIFEST | sha256sum -c --quiet -); then
    _ve_fail "sha256 mismatch in $VLLM_STAGE (a part was cut short?): send the parts again"
    return 1 2>/dev/null || exit 1
  fi
  read -r _ _ve_xz _ve_xzsum _ve_whl _ve_whlsum < <(awk '$1=="join"' "$VLLM_STAGE/MANIFEST")
  (cd "$VLLM_STAGE" && if [ ! -f "$_ve_whl" ] || ! echo "$_ve_whlsum  $_ve_whl" | sha256sum -c --quiet - 2>/dev/null; then
     cat $(awk -v x="$_ve_xz" '$1=="file" && index($5, x ".part-")==1 {print $5}' MANIFEST | sort) > "$_ve_xz" &&
     echo "$_ve_xzsum  $_ve_xz" | sha256sum -c --quiet - &&
     if command -v xz >/dev/null; then xz -dc "$_ve_xz" > "$_ve_whl"
     else python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'), 1<<22)" "$_ve_xz" "$_ve_whl"; fi &&
     echo "$_ve_whlsum  $_ve_whl" | sha256sum -c --quiet - && rm -f "$_ve_xz"
   fi) || { _ve_fail "could not rebuild $_ve_whl from its pieces"; return 1 2>/dev/null || exit 1; }
  if ! (cd "$VLLM_STAGE" && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
          --disable-pip-version-check --root-user-action=ignore --target "$VLLM_SITE" \
          $(awk '$1=="install"{print $2}' MANIFEST)); then
    _ve_fail "pip install into $VLLM_SITE failed"
    return 1 2>/dev/null || exit 1
  fi
  touch "$_ve_stamp"
  echo "[vllm-env] installed $(awk '$1=="install"' "$VLLM_STAGE/MANIFEST" | wc -l) wheels in $((SECONDS - _ve_t0)) s"
fi
# SGLang's site, less what must not be seen by vLLM
if [ ! -d "$SGL_SITE/pydantic" ] || [ ! -d "$SGL_SITE/xgrammar" ]; then
  _ve_fail "SGLang's wheels are not installed in $SGL_SITE (pydantic, xgrammar, fastapi, ... come from there):" \
           "make the .whl/a and .whl/b calls first (source .whl/a/sglang-env.sh; source bench/device/env.sh)"
  return 1 2>/dev/null || exit 1
fi
rm -rf "$VLLM_SHARE"; mkdir -p "$VLLM_SHARE"
for _ve_e in "$SGL_SITE"/* "$SGL_SITE"/.[!.]*; do
  [ -e "$_ve_e" ] || continue
  _ve_b=${_ve_e##*/}
  case "$_ve_b" in
    bin|.sglang-env-*|.ready|flashinfer|flashinfer_python-*|flashinfer_cubin*|sglang|sglang-*|sgl_kernel|sglang_kernel-*|compressed_tensors|compressed_tensors-*) continue;;
    transformers|transformers-*|tokenizers|tokenizers-*) [ "${VLLM_TRANSFORMERS:-site}" = machine ] && continue;;
  esac
  ln -s "$_ve_e" "$VLLM_SHARE/$_ve_b"
done
# PYTHONPATH: /tmp/vsite, /tmp/vshare, then what was there less /tmp/site
_ve_pp=""
IFS=: read -ra _ve_parts <<< "${PYTHONPATH:-}"
for _ve_p in "${_ve_parts[@]}"; do
  case "$_ve_p" in ""|"$SGL_SITE"|"$SGL_SITE/"|"$VLLM_SITE"|"$VLLM_SHARE") ;; *) _ve_pp="$_ve_pp:$_ve_p";; esac
done
export PYTHONPATH="$VLLM_SITE:$VLLM_SHARE$_ve_pp"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# no internet: no usage reports; FlashInfer is hidden, so never ask vLLM for its sampler
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_USE_FLASHINFER_SAMPLER=0
# keep NVLink multicast off (the machine's rule; also for child processes)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ "${VLLM_ENV_VERIFY:-1}" != 0 ]; then
  if ! python3 - <<'PYEOF'
import importlib.metadata, importlib.util, sys
import torch, transformers, tokenizers, vllm, trl, datasets, openai, xgrammar
bad = []
if not torch.__version__.startswith("2.11.0"):
    bad.append(f"torch {torch.__version__} is not the machine's 2.11.0")
if importlib.util.find_spec("flashinfer") is not None:
    bad.append("flashinfer is importable (vLLM would use SGLang's 0.6.15.post1)")
from trl.import_utils import is_vllm_available
if not is_vllm_available():
    bad.append("trl does not accept this vllm")
print("[vllm-env] torch", torch.__version__, "| vllm", vllm.__version__, "| trl", trl.__version__,
      "| transformers", transformers.__version__, "(" + transformers.__file__.rsplit("/", 2)[0] + ")",
      "| tokenizers", tokenizers.__version__, "| datasets", datasets.__version__, "| openai", openai.__version__,
      "| xgrammar", importlib.metadata.version("xgrammar"))
if bad:
    print("[vllm-env] ERROR: " + "; ".join(bad), file=sys.stderr)
    sys.exit(1)
PYEOF
  then
    _ve_fail "import check failed (see above)"
    return 1 2>/dev/null || exit 1
  fi
fi
unset _ve_here _ve_d _ve_f _ve_b _ve_missing _ve_stamp _ve_t0 _ve_xz _ve_xzsum _ve_whl _ve_whlsum _ve_e _ve_pp _ve_parts _ve_p
unset -f _ve_fail
true
