"""Files shipped in the package so the smoke preset and the tests run offline.

``builtin:NAME`` in ``model.path`` or ``data.path`` names a folder here:
``builtin:qwen2.5-0.5b-instruct`` (tokenizer + config, no weights), ``builtin:gsm8k`` (a GSM8K sample).
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "builtin:"
ROOT = Path(__file__).resolve().parent


def resolve(path: str) -> str:
    """Map 'builtin:NAME' to the shipped folder; any other string is returned unchanged."""
    if not path.startswith(PREFIX):
        return path
    name = path[len(PREFIX):]
    target = ROOT / name
    if not target.is_dir() or name.startswith((".", "_")):
        valid = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
        raise FileNotFoundError(f"unknown builtin {path!r}; valid: {', '.join(PREFIX + v for v in valid)}")
    return str(target)
