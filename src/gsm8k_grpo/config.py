"""Run configuration: pydantic models, presets, and the preset -> file -> --set merge.

Sources, later wins: preset YAML (``--preset NAME``) -> ``--config FILE.yaml`` -> ``--set a.b=c``.
Every model forbids unknown keys; cross-field checks say how to fix what they refuse.
No torch here (the CLI imports this module and must start in well under a second).
"""

from __future__ import annotations

import difflib
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gsm8k_grpo.errors import InputError


class ConfigError(InputError):
    """A bad config input; str(e) is the one line shown to the user."""


class _Strict(BaseModel):
    # allow_inf_nan: an lr or temperature of .inf or .nan passes a `gt=0` bound, then breaks torch
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    path: str = Field("Qwen/Qwen2.5-0.5B-Instruct", description="hub id or local model dir ('builtin:NAME' = shipped)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of a hub id; None = main")
    random_init: bool = Field(False, description="build the architecture from path's config with random weights")
    config_overrides: dict[str, Any] = Field(default_factory=dict, description="config.json fields to override "
                                             "(with random_init)")
    init_seed: int = 0
    max_params_on_cpu: int = Field(100_000_000, description="bigger models refuse the CPU engine unless set explicitly")

    @field_validator("config_overrides")
    @classmethod
    def _sizes(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        for key, value in overrides.items():  # sizes and counts: a 0 or negative one crashes torch later
            sized = key.endswith(("_size", "_layers", "_heads", "_dim", "_embeddings")) or key.startswith("num_")
            if sized and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"model.config_overrides.{key} must be a whole number >= 1 (got {value!r})")
        return overrides


class DataConfig(_Strict):
    path: str | None = Field(None, description="local GSM8K: dir with train/test .jsonl|.parquet, or a file; None = hub")
    hub_name: str = "openai/gsm8k"
    hub_config: str = "main"
    max_train_samples: int | None = Field(None, ge=1)
    seed: int = 0
    instruction: str = "Please reason step by step, and put your final answer within \\boxed{}."
    system_prompt: str | None = Field(None, description="None = the chat template's default")


class RolloutConfig(_Strict):
    engine: Literal["auto", "sglang", "hf"] = Field("auto", description="auto = SGLang on a GPU host where it is "
                                                    "installed, else the in-process HF engine")
    n: int = Field(8, description="group size: samples per prompt. 8 is the common GRPO/DAPO choice for small "
                   "models; about half the groups of 8 are all-right or all-wrong and carry no signal; 16 dropped "
                   "fewer (38 %) but scored the same on GSM8K test (docs/results/learning.md)")
    temperature: float = Field(1.0, gt=0, description="sample the policy itself, so the engine's log-probs are the "
                               "policy's (0.7 scored 3.8 points lower: docs/results/learning.md)")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1, description="Qwen2.5-0.5B's GSM8K answers average ~300 tokens; 512 "
                                "truncates 3-4 %")
    mem_fraction: float = Field(0.4, gt=0, lt=1, description="SGLang --mem-fraction-static")
    enable_memory_saver: bool = Field(False, description="release SGLang memory during the update phase")
    server_args: list[str] = Field(default_factory=list, description="extra sglang.launch_server arguments")
    server_timeout_s: float = Field(600, gt=0)
    hf_batch_size: int = Field(64, ge=1, description="sequences per generate() call in the HF engine")
    gpus: int = Field(1, ge=0, description="GPUs given to SGLang when several are visible")
    parallel: Literal["dp", "tp"] = Field("dp", description="with rollout.gpus > 1: dp = one SGLang server per GPU "
                                          "(throughput for small models); tp = one server tensor-parallel over them")
    overlap: bool | None = Field(None, description="generate the next step's rollouts while this step updates (one "
                                 "step off-policy, corrected by algorithm.offpolicy_weight_cap). Unset (the default): "
                                 "on with the SGLang engine, whose server generates while the trainer updates; off "
                                 "with the in-process HF engine and with rollout.enable_memory_saver. false: on-policy")

    @field_validator("server_args", mode="before")
    @classmethod
    def _args_as_text(cls, value):  # --set rollout.server_args=[--cuda-graph-max-bs, 16]: YAML reads 16 as a number
        if isinstance(value, list):
            return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
        return value


class AlgorithmConfig(_Strict):
    loss_agg: Literal["token", "sequence"] = Field("token", description="token = DAPO mean over all completion "
                                                   "tokens, so long answers are not under-weighted; sequence = GRPO")
    adv_norm: Literal["std", "none"] = Field("std", description="std = GRPO; none = Dr.GRPO (mean-centred only)")
    clip_low: float = Field(0.2, description="PPO clip 1 - clip_low; engages only when old log-probs differ from "
                            "the training forward's: trainer.mini_batch_size < batch_size or ppo_epochs > 1")
    clip_high: float = Field(0.28, description="PPO clip 1 + clip_high (DAPO clip-higher); inactive like clip_low "
                             "with one epoch and one mini-batch (the ratio is then exactly 1)")
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the initial policy; 0 = no reference model (DAPO, "
                           "Dr.GRPO: the term mostly costs a reference model's memory and time; 0.04 in 1hour: +6.0 and "
                           "about +4.5 points in 2 runs against +7.4, docs/results/learning.md)")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus: each token's loss less entropy_coef x the "
                                "policy's entropy there (with its gradient), aggregated like the policy loss and not "
                                "weighted off-policy; 0 = none (DAPO, Dr.GRPO; verl's default). Costs a second "
                                "[chunk, vocab] buffer. 0.001 in 1hour: +8.0 points (2 runs) against +7.4, +0.5 "
                                "paired (95 % CI -1.3 to +2.3), not shown to help (docs/results/learning.md)")
    filter_groups: bool = Field(True, description="drop groups whose rewards are all equal (zero advantage, no signal)")
    ppo_epochs: int = Field(1, ge=1)
    reward_mode: Literal["strict", "lenient"] = Field(
        "strict", description="strict = last \\boxed{} or '#### N' (also teaches the answer format); lenient = "
        "strict, else the last number")
    format_bonus: float = Field(0.0, ge=0, description="added when the completion has a \\boxed{} answer")
    offpolicy_weight_cap: float = Field(2.0, ge=1, description="with rollout.overlap: per-token weight "
                                        "pi_trainer / pi_rollout of the one-step-old samples, truncated at this cap")
    oversample: float = Field(1.0, ge=1, le=4, description="prompts generated per step = ceil(trainer.batch_size "
                              "x oversample) in one engine call; the batch keeps the first trainer.batch_size groups "
                              "with signal (DAPO dynamic sampling), the step's own prompts first, the extra ones drawn "
                              "at random from the pool; generation and its KV cache grow by that factor; 1 = off")
    skip_no_signal: bool = Field(False, description="a question whose group had no signal (all right or all "
                                 "wrong) is not asked again in the run: when its turn comes it is swapped for a "
                                 "seeded draw of a question without that record, and it is not drawn as an "
                                 "algorithm.oversample extra. A curriculum from the rollouts themselves, no extra "
                                 "model calls (in 1hour's second epoch it trains the questions that had signal in "
                                 "the first). The training batch's reward and accuracy then cover chosen "
                                 "questions: compare runs by eval accuracy. Needs filter_groups")

    @model_validator(mode="after")
    def _check(self) -> "AlgorithmConfig":
        if self.clip_low <= 0 or self.clip_high <= 0:
            raise ValueError("algorithm.clip_low and clip_high must be positive (typical: 0.2 and 0.28)")
        if self.clip_low >= 1:
            raise ValueError("algorithm.clip_low must be < 1 (the ratio floor is 1 - clip_low)")
        if self.skip_no_signal and not self.filter_groups:
            raise ValueError("algorithm.skip_no_signal needs algorithm.filter_groups=true (it skips what the filter "
                             "would drop)")
        if self.oversample > 1 and not self.filter_groups:
            raise ValueError("algorithm.oversample > 1 needs algorithm.filter_groups=true (without the filter it "
                             "would only enlarge the batch)")
        return self


class OptimizerConfig(_Strict):
    lr: float = Field(2e-6, gt=0, description="full fine-tuning of a 0.5B model with 64 samples a step: 1e-6 (the "
                      "TRL/verl default) moves too little in 25-124 steps, AReaL's 1.7e-5 showed no gain")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(5, ge=0, description="linear lr warm-up over this many optimizer steps; 0 in "
                              "1hour: +5.8 points (2 runs) against +7.4, -1.7 paired; 15: +5.9, -1.6 paired "
                              "(docs/results/learning.md)")
    schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="after the warm-up")
    max_grad_norm: float = Field(1.0, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("optimizer.betas must both be in [0, 1) (typical: [0.9, 0.999])")
        return betas


class TrainerConfig(_Strict):
    batch_size: int = Field(8, ge=1, description="prompts per step")
    mini_batch_size: int | None = Field(None, ge=1, description="prompts per optimizer step (None = batch_size)")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (None = epochs over the data)")
    micro_batch_tokens: int = Field(16384, ge=8, description="token budget (padded) of one forward/backward")
    grad_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile each decoder layer's forward (dynamic shapes; "
                          "first steps pay the compile time); off, with a warning, while grad_checkpointing is "
                          "on, whose recomputation the compiled layers would skip")
    dtype: Literal["auto", "bf16", "fp32"] = Field("auto", description="compute dtype: auto = bf16 on GPU, fp32 on CPU")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    logprob_chunk: int = Field(1024, ge=16, description="tokens per lm_head/log-softmax chunk")
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1, description="cap the trainer's share of its GPU")
    gpu_memory_limit: str | None = Field(
        None, description="GPU memory the run may use on the trainer's GPU, trainer and SGLang (when it shares that "
        "GPU) together, e.g. '12GiB': a card shared with other work, or a smaller card's plan tried on a bigger one. "
        "The memory plan is made for this size; SGLang gets an absolute KV pool (--max-total-tokens) and the "
        "trainer's allocator is capped at the rest (memory.py). None = the whole card")
    time_limit_minutes: float | None = Field(
        None, gt=0, description="wall clock from the start of this run's setup (a scheduler's limit, less the "
        "seconds of imports before it): before a step that would end past it, save a checkpoint and stop; "
        "grpo resume continues (None = no limit)")

    @field_validator("gpu_memory_limit", mode="before")
    @classmethod
    def _limit(cls, value):
        from gsm8k_grpo.memory import GIB, parse_size

        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # --set trainer.gpu_memory_limit=12: a bare number is GiB
        if isinstance(value, str) and parse_size(value) < GIB:  # parse_size's ValueError names what is valid
            raise ValueError(f"trainer.gpu_memory_limit {value!r} is below 1 GiB; no run fits in it")
        return value

    @model_validator(mode="after")
    def _check(self) -> "TrainerConfig":
        if self.gpu_memory_limit is not None and self.gpu_memory_fraction is not None:
            raise ValueError("set one of trainer.gpu_memory_limit (the run's memory, trainer and SGLang) and "
                             "trainer.gpu_memory_fraction (the trainer's share alone), not both")
        mb = self.mini_batch_size or self.batch_size
        if self.batch_size % mb:
            raise ValueError(
                f"trainer.batch_size ({self.batch_size}) must be divisible by trainer.mini_batch_size ({mb}) "
                "so every optimizer step sees whole groups"
            )
        return self


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(_Strict):
    rank: int = Field(0, ge=0, le=1024, description="LoRA rank; 0 = full fine-tuning. > 0: the trainer trains "
                      "low-rank adapters on target_modules (peft) and keeps gradients and Adam state for them only; "
                      "the engine gets the merged weights; a checkpoint holds adapter/ and a merged model/")
    alpha: float = Field(32.0, gt=0, description="the adapters' output is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input (0: the training forward "
                           "is the policy that sampled)")
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1,
                                      description="names of the linear layers that get adapters (default: every "
                                      "linear layer of a decoder block)")


class WeightsConfig(_Strict):
    transport: Literal["auto", "ipc", "disk", "nccl"] = "auto"
    bucket_mb: int = Field(512, ge=1)
    disk_dir: str | None = Field(None, description="where disk sync writes (None = /dev/shm if it fits, else RUN_DIR)")


class CheckpointConfig(_Strict):
    every: int = Field(50, ge=0, description="save every N steps (0 = only at the end)")
    keep_last: int = Field(2, ge=1)
    save_dtype: Literal["bf16", "fp32", "auto"] = Field("auto", description="dtype of the exported HF model")


class LoggingConfig(_Strict):
    wandb: Literal["online", "offline", "disabled"] | None = Field(
        None, description="W&B mode; None = the WANDB_MODE environment variable, else online (W&B logs only "
        "with a key: WANDB_API_KEY, ./wandb/.wandb_api_key or `wandb login`)")
    project: str = "gsm8k-grpo-local"
    entity: str | None = None
    console_every: int = Field(1, ge=1)


class EvalConfig(_Strict):
    every: int = Field(0, ge=0, description="eval every N steps on a held-out test slice (0 = off)")
    samples: int = Field(200, ge=1)
    max_new_tokens: int | None = Field(None, ge=1, description="None = rollout.max_new_tokens")
    at_end: bool = True


class RunConfig(_Strict):
    experiment_name: str = "grpo"
    trial_name: str = "trial0"
    output_dir: str = "./runs"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.rollout.n < 2:
            raise ValueError("rollout.n (group size) must be >= 2: GRPO compares samples within a group")
        for name in (self.experiment_name, self.trial_name):
            if not name or "/" in name or "\0" in name or name in (".", ".."):
                raise ValueError(f"experiment_name/trial_name {name!r} must be a plain, non-empty folder name")
            if len(name.encode()) > 200:  # filesystems allow 255 bytes; the run dir adds .old-<time> on --restart
                raise ValueError(f"experiment_name/trial_name {name[:20]!r}... is {len(name.encode())} bytes long; "
                                 "use at most 200")
        if not self.output_dir.strip():
            raise ValueError("output_dir is empty; give a folder (the default is ./runs)")
        if self.weights.transport == "nccl" and self.rollout.engine == "hf":
            raise ValueError("weights.transport=nccl needs rollout.engine=sglang (the HF engine lives in-process)")
        if self.weights.transport == "ipc" and self.rollout.engine == "hf":
            raise ValueError("weights.transport=ipc needs rollout.engine=sglang; use disk or auto with the HF engine")
        if self.rollout.overlap and self.rollout.enable_memory_saver:
            raise ValueError("rollout.overlap and rollout.enable_memory_saver exclude each other: the saver releases "
                             "SGLang's memory during the update, when an overlapped rollout is generating")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment_name / self.trial_name

    @property
    def prompts_per_step(self) -> int:
        """Prompts generated per step: ceil(trainer.batch_size x algorithm.oversample)."""
        return prompts_per_step(self.trainer.batch_size, self.algorithm.oversample)

    def with_engine(self, engine_kind: str) -> "RunConfig":
        """rollout.overlap settled for the engine that runs: an unset one is on with SGLang (a server
        process generates the next batch while the trainer updates: in two 1hour runs each it learned as
        well as on-policy, +6.3 against +5.4 points, in about 30 % less time a step beside other
        trials; bench/results/2026-12-03-h200-session10.md) and off with the in-process HF engine (generation would share the
        trainer's cores or GPU) or with the memory saver (which frees SGLang's memory during the update)."""
        r = self.rollout
        if r.overlap is not None:
            return self
        on = engine_kind == "sglang" and not r.enable_memory_saver
        return self.model_copy(update={"rollout": r.model_copy(update={"overlap": on})})


def prompts_per_step(batch_size: int, oversample: float) -> int:
    # rounded first: 10 x 1.1 is 11.000000000000002 in floats, and must give 11
    return max(batch_size, math.ceil(round(batch_size * oversample, 9)))


# ----------------------------------------------------------------------------- presets

def _preset_dir() -> Path:
    """Presets ship inside the wheel (gsm8k_grpo/presets); a source checkout reads ./presets."""
    try:
        p = resources.files("gsm8k_grpo") / "presets"
        if p.is_dir():
            return Path(str(p))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "presets"


def preset_names() -> list[str]:
    d = _preset_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def preset_descriptions() -> dict[str, str]:
    """Preset name -> its first comment line without the leading 'NAME: ' (one line for --help)."""
    out = {}
    for name in preset_names():
        first = (_preset_dir() / f"{name}.yaml").read_text().split("\n", 1)[0]
        out[name] = first.lstrip("# ").removeprefix(f"{name}:").strip()
    return out


def _read_yaml(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (IsADirectoryError, PermissionError) as e:
        raise ConfigError(f"{what} cannot be read: {path} ({e.__class__.__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text (a YAML file of config keys is expected)") from None
    if "\0" in text:
        raise ConfigError(f"{what} {path} is a binary file, not YAML")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise ConfigError(f"{what} {path} is not valid YAML ({problem} at{where})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a YAML mapping of config keys, got {type(data).__name__}")
    return data


def load_preset(name: str) -> dict:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)}")
    data = _read_yaml(_preset_dir() / f"{name}.yaml", "preset")
    data.setdefault("experiment_name", name)
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    """over's keys into base, sections merged key by key; an empty mapping ({}) replaces (clears) the value."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and v and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_set(item: str) -> dict:
    """'a.b=c' -> {'a': {'b': <yaml value of c>}}."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is malformed; use --set section.key=value (e.g. --set trainer.batch_size=16)")
    key, _, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"--set {item!r} has an empty key; use --set section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML (quote strings with special characters)") from None
    out: dict = {}
    cur = out
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        full = f"{prefix}{name}"
        keys.append(full)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, full + "."))
    return keys


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"])
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc, _known_keys(RunConfig), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown config key {loc!r}{hint}"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if loc:
        return f"config field {loc!r}: {msg} (got {e.get('input')!r})"
    return f"config: {msg}"


def build_config(
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    data: dict = {}
    if preset:
        data = load_preset(preset)
    if config_file:
        data = _deep_merge(data, _read_yaml(Path(config_file), "config file"))
    for item in overrides or []:
        data = _deep_merge(data, parse_set(item))
    return validate_config(data)


def validate_config(data: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


UNSET_NOTES = {"  overlap: null": "  # unset: on with the SGLang engine, off with the HF engine or the memory saver"}


def to_yaml(cfg: RunConfig) -> str:
    """The config as YAML (--dry-run, RUN_DIR/config.yaml); an unset setting says how it is settled."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, width=10_000)
    return "\n".join(ln + UNSET_NOTES.get(ln, "") for ln in text.split("\n"))


def _shown(value) -> str:
    """A config value in a diff line; None is an unset setting (rollout.overlap: settled by the engine)."""
    return "unset" if value is None else repr(value)


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts ('key: old -> new')."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_diff(a, b, f"{prefix}{k}."))
        elif a != b:
            out.append(f"{prefix}{k}: {_shown(a)} -> {_shown(b)}")
    return out
