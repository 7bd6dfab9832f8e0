"""Packaging: the wheel's contents, the wheel installed into a clean venv, and the Dockerfile.

The wheel is built offline from this checkout (``pip wheel --no-deps --no-build-isolation``, so
hatchling must be importable: the ``dev`` extra brings it). It is then installed with ``--no-deps``
into a fresh venv whose own site-packages come first, with this interpreter's site-packages
appended after it for the dependencies (typer, pydantic, torch, ...). ``grpo`` then runs from that
venv in an empty temp dir, without PYTHONPATH, so presets and assets can only come from the wheel.
No test here installs anything into the running environment or touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("fast", "1hour", "3hour", "full", "smoke")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "config.json", "generation_config.json")


def _clean_env(**extra: str) -> dict:
    """The environment without anything that could point Python at the source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "WANDB_API_KEY")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)
    return env


def _run(cmd: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling is not importable here (pip install -e '.[dev]' brings it); "
                    "the offline wheel build needs it because it runs without build isolation")
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", out, ROOT], cwd=out, timeout=180)
    wheels = list(out.glob("gsm8k_grpo-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {wheels}"
    return wheels[0]


def test_wheel_contents(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    want = [f"gsm8k_grpo/presets/{p}.yaml" for p in PRESETS]
    want += [f"gsm8k_grpo/assets/gsm8k/{f}" for f in ("train.jsonl", "test.jsonl", "LICENSE")]
    want += [f"gsm8k_grpo/assets/qwen2.5-0.5b-instruct/{f}" for f in TOKENIZER_FILES]
    want += ["gsm8k_grpo/__init__.py", "gsm8k_grpo/cli.py", "gsm8k_grpo/assets/__init__.py"]
    missing = [n for n in want if n not in names]
    assert not missing, f"missing from {wheel.name}: {missing}"
    # Every shipped asset file of the source tree is in the wheel (nothing silently dropped).
    shipped = {f"gsm8k_grpo/{p.relative_to(ROOT / 'src' / 'gsm8k_grpo').as_posix()}"
               for p in (ROOT / "src" / "gsm8k_grpo" / "assets").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped <= names, f"asset files not in the wheel: {sorted(shipped - names)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert re.search(r"^\[console_scripts\]\s*\n(?:.*\n)*?grpo\s*=\s*gsm8k_grpo\.cli:main\s*$", entry_points,
                     re.MULTILINE), entry_points


def test_installed_wheel_runs_from_a_clean_venv(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp_path)
    vpy = venv / "bin" / "python"
    # A venv made from a venv's python inherits the *base* interpreter's site-packages, not the
    # project venv's; append this interpreter's site-packages (plain paths: their .pth files, such
    # as an editable install pointing at src/, are not processed) so the dependencies resolve.
    site = _run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    site_dir = Path(site.stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site_dir / "zz_project_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    _run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=tmp_path)

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    grpo = venv / "bin" / "grpo"
    assert grpo.is_file(), "the grpo console script was not installed"

    version = _run([grpo, "--version"], cwd=cwd)
    assert re.fullmatch(r"grpo \d+\.\d+\.\d+\S*\s*", version.stdout), version.stdout

    dry = _run([grpo, "train", "--preset", "smoke", "--dry-run"], cwd=cwd)
    assert "experiment_name: smoke" in dry.stdout
    assert "builtin:gsm8k" in dry.stdout and "random_init: true" in dry.stdout
    listed = subprocess.run([str(grpo), "train"], check=False, cwd=cwd, env=_clean_env(), capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode != 0 and all(p in listed.stdout + listed.stderr for p in PRESETS), listed

    # Where the package, its presets and its assets were found: inside the venv, not the source tree.
    script = ("import gsm8k_grpo, gsm8k_grpo.config as c, gsm8k_grpo.assets as a\n"
              "print(gsm8k_grpo.__file__); print(c._preset_dir()); print(a.resolve('builtin:gsm8k'))\n"
              "from transformers import AutoTokenizer\n"
              "t = AutoTokenizer.from_pretrained(a.resolve('builtin:qwen2.5-0.5b-instruct'))\n"
              "print(len(t('What is 2+3?')['input_ids']) > 0, t.eos_token)")
    probe = _run([vpy, "-c", script], cwd=cwd, timeout=180)
    lines = probe.stdout.strip().splitlines()
    for line in lines[:3]:
        assert Path(line).resolve().is_relative_to(venv.resolve()), f"{line} is not inside {venv}: {lines}"
        assert not Path(line).resolve().is_relative_to(ROOT), lines
    assert lines[3].startswith("True "), lines


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    local = Path(sys.executable).parent / "hadolint"  # the venv's bin when it is not on PATH
    return found or (str(local) if local.is_file() else None)


def test_dockerfile_lints():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings it on Linux and macOS)")
    p = subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(ROOT / "Dockerfile")],
                       check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"hadolint findings:\n{p.stdout}{p.stderr}"


def test_dockerfile_shape():
    """What the docs promise about the image; the image itself is never built here (no engine)."""
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG SGLANG_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"lmsysorg/sglang:v0\.5\.17-cu\d+(-runtime)?", base.group(1)), base
    assert re.search(r"^FROM \$\{SGLANG_IMAGE\}$", text, re.MULTILINE)
    assert re.search(r"pip install --no-cache-dir -c /tmp/keep\.txt \.", text)
    assert "torch" in re.search(r"grep -iE '\^\((.*?)\)==", text).group(1)
    assert re.search(r'^ENTRYPOINT \["grpo"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["--help"\]$', text, re.MULTILINE)
    assert re.findall(r"^WORKDIR (\S+)$", text, re.MULTILINE)[-1] == "/runs"
    assert "docker run --gpus all --ipc=host --shm-size=16g" in text
    assert "WANDB_API_KEY=" not in text.replace("# ", "")  # no key baked in
    # Everything COPY'd exists and is not excluded by .dockerignore.
    ignored = [ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    for line in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for src in line.split():
            assert (ROOT / src).exists(), src
            assert src.rstrip("/") not in ignored, f"{src} is COPY'd but .dockerignore excludes it"
    for must in (".git", "runs", "wandb", ".venv*", ".whl", ".carry"):
        assert must in ignored, f".dockerignore should exclude {must}"
