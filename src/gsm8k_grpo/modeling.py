"""Model and tokenizer loading and saving, shared by the trainer, the engines and eval.

A hub id in ``model.path`` is resolved once, by huggingface_hub's own download and cache (which
honour HF_HUB_OFFLINE, HF_HOME, HF_TOKEN and ``model.revision``), to a local snapshot folder;
every engine, transport and the trainer then load that plain HF model dir. A random-init model
(``model.random_init``) is built once from the config (plus ``model.config_overrides``) with a
fixed seed and saved to ``RUN_DIR/base_model``.

A checkpoint's model dir is written by ``save_model_dir`` through transformers' own saving
(config, generation config, tokenizer with its chat template) and safetensors: it loads with
from_pretrained and SGLang anywhere, without the base model, and holds no path of this machine.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch

from gsm8k_grpo import assets
from gsm8k_grpo.config import ModelConfig
from gsm8k_grpo.errors import InputError

# Files a model dir may need besides weights and config (hub snapshots fetch no more than these)
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


class ModelError(InputError):
    """A model that cannot be found or loaded; str() is the one line shown to the user."""


def looks_like_hub_id(path: str) -> bool:
    """NAME or ORG/NAME that is not an existing folder; anything else is meant as a local folder."""
    if path.startswith(assets.PREFIX) or path.startswith(("/", ".", "~")) or Path(path).expanduser().exists():
        return False
    return 1 <= len(path.split("/")) <= 2 and all(path.split("/"))


def resolve_model_dir(path: str, revision: str | None = None, config_only: bool = False) -> str:
    """A local model folder for `path`: a builtin, a local folder, or a hub id's snapshot (downloaded
    once into the HF cache, or found there offline). config_only: fetch only config.json of a hub id
    (enough for the size checks that come before the download)."""
    try:
        local = assets.resolve(path)
    except FileNotFoundError as e:
        raise ModelError(str(e)) from None
    if not looks_like_hub_id(local):
        folder = Path(local).expanduser()
        if not folder.is_dir():
            raise ModelError(f"model.path {path!r} is not a folder (give a local HF model dir or a hub id like "
                             "Qwen/Qwen2.5-0.5B-Instruct)")
        return str(folder)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return snapshot_download(path, revision=revision,
                                 allow_patterns=["config.json"] if config_only else SNAPSHOT_PATTERNS)
    except HFValidationError as e:
        raise ModelError(f"model.path {path!r} is neither a local folder nor a valid hub id ({e})") from None
    except Exception as e:  # offline and not cached, not found, gated, network: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"model {path!r}{f' (revision {revision})' if revision else ''} could not be fetched from "
                         f"the hub or found in the local HF cache: {type(e).__name__}: {first}. Download it once "
                         "with network access (grpo eval/train do so), or set model.path to a local model dir") from None


def load_config(path: str, overrides: dict | None = None):
    """The model's config from a local dir (see resolve_model_dir), with overrides applied."""
    from transformers import AutoConfig

    overrides = dict(overrides or {})
    try:  # overrides go through from_pretrained so derived fields (layer_types, ...) follow them
        base = AutoConfig.from_pretrained(assets.resolve(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"model {path}: config.json cannot be read ({str(e).splitlines()[0][:160]})") from None
    unknown = [k for k in overrides if not hasattr(base, k)]
    if unknown:
        raise ModelError(f"model.config_overrides: {type(base).__name__} has no field {unknown[0]!r}")
    if not overrides:
        return base
    d = base.to_dict()
    if "num_hidden_layers" in overrides:
        d.pop("layer_types", None)  # recomputed by the config class for the new depth
    d.update(overrides)
    return type(base).from_dict(d)


def load_tokenizer(path: str, pad: bool = True):
    """The tokenizer of a local model dir; pad=True gives it a pad token (eos) when it has none."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(assets.resolve(path))
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"the tokenizer of {path} cannot be loaded ({str(e).splitlines()[0][:160]}); a model dir "
                         "needs its tokenizer files (tokenizer.json or vocab.json + merges.txt, tokenizer_config.json)") from None
    if pad and not getattr(tok, "chat_template", None):  # prompts are built with it (data/prompts.py)
        raise ModelError(f"the tokenizer of {path} has no chat template (tokenizer_config.json or "
                         "chat_template.jinja); give a chat/instruct model dir with its tokenizer files")
    if pad and tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_generation_config(path: str):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


def count_params(cfg) -> int:
    """Parameters of the architecture, counted on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def _umask() -> int:
    """This process's umask, read without changing it (os.umask sets it, which races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def make_readable(model_dir: Path) -> None:
    """Give the files of a written model dir the mode any new file gets (0644 under umask 022).
    safetensors >= 0.7 writes model.safetensors through a private temporary file (mode 0600), so a
    checkpoint on a shared filesystem could not be read by anyone but its writer."""
    mode = 0o666 & ~_umask()
    for f in model_dir.iterdir():
        if f.is_file() and (f.stat().st_mode & 0o777) != mode:
            f.chmod(mode)


def materialize(model_cfg: ModelConfig, dest: Path) -> str:
    """A local model dir for model_cfg: the resolved path itself, or `dest` after building random
    weights there once (with the source's tokenizer and generation config)."""
    source = resolve_model_dir(model_cfg.path, model_cfg.revision)
    if not model_cfg.random_init:
        if model_cfg.config_overrides:
            raise ModelError("model.config_overrides needs model.random_init: true (pretrained weights fix the shapes)")
        return source
    if (dest / "config.json").is_file():
        return str(dest)
    from transformers import AutoModelForCausalLM

    cfg = load_config(source, model_cfg.config_overrides)
    torch.manual_seed(model_cfg.init_seed)
    # saved in bf16, like released checkpoints, so SGLang serves it in bf16 (dtype "auto")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(torch.bfloat16)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config._name_or_path = ""
    model.save_pretrained(tmp)
    load_tokenizer(source, pad=False).save_pretrained(tmp)
    generation = load_generation_config(source)
    if generation is not None:
        generation.save_pretrained(tmp)
    make_readable(tmp)
    tmp.rename(dest)
    return str(dest)


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(assets.resolve(path), dtype=dtype)
    except Exception as e:  # noqa: BLE001 - a damaged file surfaces as many kinds of error
        raise ModelError(f"model {path} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return model.to(device)


def save_model_dir(named_tensors, hf_config, source_dir: str, dest: Path, dtype: torch.dtype | None,
                   is_writer: bool) -> None:
    """Write an HF model dir from full tensors (every rank iterates: a collective; only the writer writes).

    Weights as one safetensors file (what save_pretrained writes for a small model), the config,
    generation config and tokenizer of `source_dir` through their own save_pretrained."""
    from safetensors.torch import save_file

    state = {}
    for name, t in named_tensors:
        if is_writer:
            state[name] = (t.to(dtype) if dtype is not None else t).cpu().contiguous()
    if not is_writer:
        return
    if getattr(hf_config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(hf_config)
    config.use_cache = True        # the trainer turned it off for itself
    config._name_or_path = ""      # no path of this machine in the saved config
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(dest)
    generation = load_generation_config(source_dir)
    if generation is not None:
        generation.save_pretrained(dest)
    load_tokenizer(source_dir, pad=False).save_pretrained(dest)
    make_readable(dest)


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))
