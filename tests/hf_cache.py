"""An offline Hugging Face hub cache holding a model under a hub-style id, laid out as
huggingface_hub writes it (refs/main -> snapshots/<commit>/ files linked to blobs/<sha256>), so the
real hub-id path (snapshot_download with HF_HUB_OFFLINE=1) runs without a network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_model(hf_home: Path, repo_id: str, model_dir: Path) -> Path:
    """Put every file of model_dir into hf_home's hub cache as repo_id at COMMIT; returns the snapshot."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    for d in (repo / "refs", repo / "blobs", snapshot):
        d.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for f in sorted(Path(model_dir).iterdir()):
        if f.is_file():
            data = f.read_bytes()
            blob = hashlib.sha256(data).hexdigest()
            (repo / "blobs" / blob).write_bytes(data)
            link = snapshot / f.name
            if not link.exists():
                os.symlink(f"../../blobs/{blob}", link)
    return snapshot
