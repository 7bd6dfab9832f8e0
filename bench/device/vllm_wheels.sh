#!/usr/bin/env bash
# vllm_wheels.sh: fetch, trim, compress and split what TRL's GRPOTrainer needs to generate with vLLM
# (colocate mode) on the GPU machine (python 3.12, torch 2.11.0+cu130, no internet there), on top of
# the SGLang wheels (.whl/a, .whl/b from ../shared/device/sglang-wheels.sh, installed in /tmp/site).
#
# Run it here (CPU machine), from the repo root:     bash bench/device/vllm_wheels.sh
# It writes, under .whl/vllm/ (ignored through /.whl/):
#     dl/        pip's downloads (cache, never carried)
#     trim/      the trimmed vllm wheel (stored, uncompressed) and its xz stream (cache)
#     p01, p02.. the parts: small wheels as they are, the xz'd vllm wheel cut into pieces, and MANIFEST
#                (identical in every part). Carry one part per call; bench/device/vllm_env.sh stages
#                each, and once all have arrived joins, unpacks and installs them into /tmp/vsite.
#     SIZES      every payload file with its size
#
# What is carried and why (everything else comes from the machine or from SGLang's /tmp/site):
#   vllm 0.25.1   pins torch==2.11.0, the machine's own: torch is never carried or replaced.
#                 Trimmed: vllm_flash_attn/_vllm_fa2_C (FA2, 182 MB; on sm90 vLLM picks FA3, kept),
#                 _moe_C_stable_libtorch (MoE kernels, 43 MB; dense Qwen2 never calls them, and vLLM
#                 imports it under contextlib.suppress(ImportError)), vllm-rs (the Rust HTTP
#                 frontend, 36 MB; only with VLLM_RUST_FRONTEND_PATH), deep_gemm's _C for python
#                 3.10/3.11/3.13/3.14. The rest is repacked uncompressed and xz'd: FA3's 146 MB .so
#                 is 37 MiB deflated but 7 MiB in xz, so 238 MiB of wheel travel as ~66 MiB.
#   trl 1.16.0    declares vllm>=0.22.0,<=0.31.0 (extra "vllm") and checks the same range at import;
#                 transformers>=4.56.2. The suite's TRL baseline ran this version.
#   datasets 5.2.0, multiprocess 0.70.19   TRL's needs that the machine lacks (dill 0.4.1 is in SGLang's).
#   openai 2.54.0 vllm.tool_parsers imports openai.types.responses.NamespaceTool at import time;
#                 SGLang's openai 2.6.1 lacks it (the 3.x line needs httpx2: not taken).
#   openai-harmony 0.0.8, cbor2 6.3.0, cachetools 8.0.2, llguidance 1.7.6   imported when
#                 vllm.entrypoints.llm / the engine core are imported (found by importing every module
#                 of the colocate path in a CPU copy of the machine's environment).
#   depyf 0.20.0 + astor 0.8.1   vllm.compilation imports depyf in one CUDA-graph check; small.
# Not carried (vLLM's Requires-Dist has them, the colocate path does not import them): flashinfer
# 0.6.13 + flashinfer-cubin, apache-tvm-ffi 0.1.9, tilelang, nvidia-cutlass-dsl, quack-kernels,
# tokenspeed-mla, humming-kernels, torchcodec, PyNvVideoCodec, fastsafetensors, nvidia-cudnn-frontend,
# mistral_common, lm-format-enforcer, outlines_core, lark, diskcache, compressed-tensors 0.17.0,
# anthropic, mcp, opentelemetry-sdk/exporters, fastapi[standard] extras, prometheus-fastapi-instrumentator,
# watchfiles, numba==0.65.0 (the machine's numba is used; only n-gram speculative decoding imports it).
#
# Knobs:  PART_MIB=N (default 44: the parts ride with a ~12 MiB tree under the 64 MiB per call),
#         EXTRA_PKGS="name==ver ..." more wheels (exact pins, --no-deps), PYTHON=python3.
set -euo pipefail

ROOT=$(git rev-parse --show-toplevel)
if [ "$(pwd -P)" != "$(cd "$ROOT" && pwd -P)" ]; then
  echo "vllm_wheels.sh: run me from the repo root ($ROOT)" >&2; exit 1
fi
EXCL=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCL")"
git check-ignore -q .whl/vllm/x 2>/dev/null || grep -qxF '/.whl/' "$EXCL" 2>/dev/null || echo '/.whl/' >> "$EXCL"

PY=${PYTHON:-python3}
W=.whl/vllm
mkdir -p "$W/dl" "$W/trim"

PKGS=(
  vllm==0.25.1 trl==1.16.0
  datasets==5.2.0 multiprocess==0.70.19
  openai==2.54.0 openai-harmony==0.0.8 cbor2==6.3.0 cachetools==8.0.2 llguidance==1.7.6
  depyf==0.20.0 astor==0.8.1
)
# shellcheck disable=SC2206
[ -n "${EXTRA_PKGS:-}" ] && PKGS+=(${EXTRA_PKGS})

PFLAGS=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp)
for n in 2_39 2_35 2_34 2_31 2_28 2_27 2_24 2_17 2_12 2_5; do PFLAGS+=(--platform "manylinux_${n}_x86_64"); done
PFLAGS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

echo "== downloading ${#PKGS[@]} wheels into $W/dl"
"$PY" -m pip download -q --disable-pip-version-check "${PFLAGS[@]}" -d "$W/dl" "${PKGS[@]}" \
  2>&1 | grep -v "is ignored: it is neither" || true

"$PY" - "$W" "${PART_MIB:-44}" "${PKGS[@]}" <<'PYEOF'
import hashlib, lzma, os, re, shutil, subprocess, sys, zipfile

W, part_mib, pkgs = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
dl, trim = os.path.join(W, "dl"), os.path.join(W, "trim")
MiB = 1 << 20
limit = int(part_mib * MiB) - 64 * 1024          # 64 KiB for MANIFEST


def norm(n):
    return re.sub(r"[-_.]+", "_", n).lower()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


files = {}
for f in os.listdir(dl):
    if f.endswith(".whl"):
        name, ver = f.split("-")[:2]
        files.setdefault((norm(name), ver), []).append(f)
chosen = []
for p in pkgs:
    name, ver = p.split("==")
    hit = files.get((norm(name), ver))
    if not hit:
        sys.exit(f"no wheel downloaded for {p}")
    chosen.append(sorted(hit)[0])

# --- vllm: drop what the colocate path on sm90 never loads, repack stored, xz ---------------
DROP = [r"vllm/vllm_flash_attn/_vllm_fa2_C\.", r"vllm/_moe_C_stable_libtorch\.", r"vllm/vllm-rs$",
        r"vllm/third_party/deep_gemm/_C\.cpython-31[0134]-"]
vllm_whl = next(f for f in chosen if norm(f.split("-")[0]) == "vllm")
src = os.path.join(dl, vllm_whl)
stored = os.path.join(trim, vllm_whl)
blob = stored + ".xz"
how = "|".join(DROP) + "|stored|xz9e"
stamp = blob + ".how"
if not (os.path.exists(blob) and os.path.exists(stamp) and open(stamp).read() == how):
    rx = re.compile("|".join(DROP))
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(stored + ".tmp", "w", zipfile.ZIP_STORED) as zout:
        record = None
        for info in zin.infolist():
            if rx.match(info.filename):
                dropped += info.file_size
                continue
            if info.filename.endswith(".dist-info/RECORD"):
                record = info
                continue
            zout.writestr(info, zin.read(info.filename), compress_type=zipfile.ZIP_STORED)
        kept = [l for l in zin.read(record).decode().splitlines() if l and not rx.match(l.split(",")[0])]
        zout.writestr(record, "\n".join(kept) + "\n", compress_type=zipfile.ZIP_STORED)
    os.replace(stored + ".tmp", stored)
    print(f"   trimmed {vllm_whl}: dropped {dropped/MiB:.0f} MiB of files; stored wheel "
          f"{os.path.getsize(stored)/MiB:.0f} MiB; compressing with xz -9e (a few minutes) ...", flush=True)
    if shutil.which("xz"):
        with open(blob + ".tmp", "wb") as out:
            subprocess.run(["xz", "-9e", "-T0", "-c", stored], stdout=out, check=True)
    else:
        with open(stored, "rb") as fi, lzma.open(blob + ".tmp", "wb", preset=9 | lzma.PRESET_EXTREME) as fo:
            shutil.copyfileobj(fi, fo, 1 << 22)
    os.replace(blob + ".tmp", blob)
    open(stamp, "w").write(how)
print(f"   {vllm_whl}: {os.path.getsize(src)/MiB:.1f} MiB wheel -> {os.path.getsize(stored)/MiB:.1f} MiB "
      f"trimmed (stored) -> {os.path.getsize(blob)/MiB:.1f} MiB xz")

small = [os.path.join(dl, f) for f in chosen if f != vllm_whl]
for p in small:
    if os.path.getsize(p) > limit:
        sys.exit(f"{p} is larger than a part")

# --- parts: balance the total over as few parts as possible; the small wheels go into the last
# parts, the xz stream is cut into pieces that fill what is left, in order -------------------
blob_size = os.path.getsize(blob)
total = blob_size + sum(os.path.getsize(p) for p in small)
n = -(-total // limit)
while True:
    cap = -(-total // n)
    bins = [[] for _ in range(n)]
    room = [cap] * n
    ok = True
    for p in sorted(small, key=os.path.getsize, reverse=True):
        s = os.path.getsize(p)
        for i in reversed(range(n)):
            if room[i] >= s:
                bins[i].append(p); room[i] -= s; break
        else:
            ok = False
    if ok and sum(room) >= blob_size:
        break
    n += 1
for d in os.listdir(W):
    if re.fullmatch(r"p\d\d", d):
        shutil.rmtree(os.path.join(W, d))
blob_name = os.path.basename(blob)
pieces = []                                     # (part index, piece name, bytes)
with open(blob, "rb") as f:
    k = 0
    for i in range(n):
        take = min(room[i], blob_size - f.tell())
        if take <= 0:
            continue
        k += 1
        pieces.append((i, f"{blob_name}.part-{k:02d}", f.read(take)))
manifest = []
for i in range(n):
    d = os.path.join(W, f"p{i+1:02d}")
    os.makedirs(d)
    for p in bins[i]:
        dst = os.path.join(d, os.path.basename(p))
        try:
            os.link(p, dst)
        except OSError:
            shutil.copy2(p, dst)
        manifest.append(f"file p{i+1:02d} {sha256(dst)} {os.path.getsize(dst)} {os.path.basename(p)}")
for i, name, data in pieces:
    dst = os.path.join(W, f"p{i+1:02d}", name)
    open(dst, "wb").write(data)
    manifest.append(f"file p{i+1:02d} {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
manifest.append(f"join {blob_name} {sha256(blob)} {os.path.basename(stored)} {sha256(stored)}")
for p in sorted([stored] + small, key=os.path.basename):
    manifest.append(f"install {os.path.basename(p)}")
text = "# vllm_wheels.sh manifest: file PART SHA256 BYTES NAME | join XZ SHA256 WHEEL SHA256 | install WHEEL\n"
text += "\n".join(manifest) + "\n"
for i in range(n):
    open(os.path.join(W, f"p{i+1:02d}", "MANIFEST"), "w").write(text)
open(os.path.join(W, "MANIFEST"), "w").write(text)
with open(os.path.join(W, "SIZES"), "w") as fh:
    rows = [(os.path.getsize(p), os.path.basename(p)) for p in small]
    rows += [(os.path.getsize(src), vllm_whl + " (as downloaded)"), (os.path.getsize(stored), vllm_whl + " (trimmed, stored)"),
             (blob_size, blob_name + " (carried, in pieces)")]
    for s, name in sorted(rows, reverse=True):
        fh.write(f"{s:>11d}  {s/MiB:7.2f} MiB  {name}\n")
for i in range(n):
    d = os.path.join(W, f"p{i+1:02d}")
    fs = [f for f in os.listdir(d) if f != "MANIFEST"]
    size = sum(os.path.getsize(os.path.join(d, f)) for f in fs)
    print(f"   {d}: {len(fs)} file(s), {size/MiB:.1f} MiB: {' '.join(sorted(fs))}")
print(f"== {len(small) + 1} wheels, {total/MiB:.1f} MiB carried in {n} part(s); one call per part, "
      f"each within 30 s of the last; then `source bench/device/vllm_env.sh`")
PYEOF
