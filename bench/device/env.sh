# Source on the GPU machine from the repo root, after the SGLang wheels are installed
# (the last part's sglang-env.sh in the installing call, /tmp/wh/sglang-env.sh afterwards). The parts
# (.whl/a, .whl/b, ...: ../shared/device/sglang-wheels.sh sizes them from the tree) go one call each;
# the installing call carries the last part only, so the part found here is that one.
_last=""
for _p in .whl/[b-z]; do [ -f "$_p/sglang-env.sh" ] && _last=$_p; done
if [ -n "$_last" ] && [ ! -f /tmp/site/.ready ]; then
  source "$_last/sglang-env.sh" && cp "$_last/sglang-env.sh" "$_last/MANIFEST" /tmp/wh/ && touch /tmp/site/.ready
elif [ -f /tmp/wh/sglang-env.sh ]; then
  source /tmp/wh/sglang-env.sh /tmp/wh
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# data carried once in .carry/ is kept in /tmp/carry for later calls; .carry/pack.tgz (a tarball of what
# .carry/ would hold, 3x smaller) is unpacked there and .carry becomes a link to it
if [ -f .carry/pack.tgz ]; then
  mkdir -p /tmp/carry && tar -xzf .carry/pack.tgz -C /tmp/carry && rm -rf .carry && ln -sfn /tmp/carry .carry
fi
if [ -d .carry/gsm8k ] && [ ! -L .carry ]; then mkdir -p /tmp/carry && cp -r .carry/. /tmp/carry/; fi
[ -d .carry/gsm8k ] || { [ -d /tmp/carry/gsm8k ] && ln -sfn /tmp/carry .carry; }
# peft (LoRA) and its dependencies, carried in .carry/pack.tgz's wheels/: into SGLang's site, once
if ls /tmp/carry/wheels/*.whl >/dev/null 2>&1 && [ -d /tmp/site ] && [ ! -f /tmp/site/.peft-ready ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --root-user-action=ignore --target /tmp/site /tmp/carry/wheels/*.whl && touch /tmp/site/.peft-ready
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# tree_snapshot DIR: a copy of this tree (src/, bench/, presets/, ...; not .whl, .carry, .git or .venv) for a
# detached chain to run from. Every device call re-syncs the working tree, so a python that a detached
# chain starts during a later call can find half a tree: session 14's chain lost its base run to
# "No module named 'gsm8k_grpo.memory'" so. alone.sh, learn/trials.sh and variants_bg.sh run from one.
# Made once per DIR and kept: the tree does not change within a hold (variants_bg.sh removes its DIR first).
tree_snapshot() {
  [ -f "$1/.complete" ] && return 0
  rm -rf "$1" && mkdir -p "$1" &&
    tar -C "$PWD" --exclude=.whl --exclude=.carry --exclude=.git --exclude=.venv -cf - . | tar -C "$1" -xf - &&
    touch "$1/.complete"
}
