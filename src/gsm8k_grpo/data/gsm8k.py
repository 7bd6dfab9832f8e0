"""GSM8K problems: from the hub by name (``openai/gsm8k``, config ``main``) or a local path.

A local ``data.path`` is a directory holding ``train`` and ``test`` files (.jsonl or .parquet),
or one such file (then it is the train split and a sibling ``test.*`` is the test split).
Each row has ``question`` and ``answer``; the gold number comes from the ``#### N`` line.
Train order is a seeded shuffle, one permutation per epoch, so step k always sees the same prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from gsm8k_grpo import assets
from gsm8k_grpo.errors import InputError
from gsm8k_grpo.reward import parse_gold

SPLITS = ("train", "test")
SUFFIXES = (".jsonl", ".parquet", ".json")


class DataError(InputError):
    """Bad data input; str() is the one line shown to the user."""


@dataclass(frozen=True)
class Problem:
    idx: int          # row index in its split
    question: str
    answer: str       # the full worked solution
    gold: str         # normalised final number


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow's errors for a damaged file vary
            raise DataError(f"{path} is not a readable parquet file ({type(e).__name__})") from None
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path} is not a JSON list of rows ({type(e).__name__})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path} must hold a JSON list of objects with question and answer")
        return rows
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise DataError(f"{path}:{lineno} is not valid JSON (expected one object per line)") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{lineno} is not a JSON object with question and answer")
                    rows.append(row)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text (a GSM8K .jsonl file has one JSON object per line)") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a data file") from None
    except PermissionError:
        raise DataError(f"{path} cannot be read (permission denied)") from None
    return rows


def _split_file(root: Path, split: str) -> Path | None:
    for suffix in SUFFIXES:
        for name in (f"{split}{suffix}", f"{split}-00000-of-00001{suffix}", f"main/{split}-00000-of-00001{suffix}"):
            if (root / name).is_file():
                return root / name
    return None


def _local_split(path: str, split: str) -> list[dict]:
    p = Path(assets.resolve(path)).expanduser()
    if p.is_dir():
        f = _split_file(p, split)
        if f is None:
            raise DataError(f"data.path {path}: no {split}.jsonl or {split}.parquet in that directory")
    elif p.is_file():
        f = p if split == "train" else _split_file(p.parent, "test")
        if f is None:
            raise DataError(f"data.path {path}: no test.jsonl/test.parquet next to it for the test split")
    else:
        raise DataError(f"data.path {path} does not exist (give a GSM8K dir with train/test .jsonl, or unset it)")
    return _read_rows(f)


def _hub_split(name: str, config: str, split: str, local_hint: str) -> list[dict]:
    try:
        import datasets

        return list(datasets.load_dataset(name, config, split=split))
    except Exception as e:  # network, auth, unknown dataset: one line for the user
        raise DataError(
            f"could not load {name}/{config} [{split}] from the hub ({e.__class__.__name__}); "
            f"{local_hint}"
        ) from None


def load_split(split: str, path: str | None = None, hub_name: str = "openai/gsm8k", hub_config: str = "main",
               local_hint: str = "set data.path to a local GSM8K dir") -> list[Problem]:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    rows = _local_split(path, split) if path else _hub_split(hub_name, hub_config, split, local_hint)
    problems = []
    for i, r in enumerate(rows):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise DataError(f"GSM8K {split} row {i} lacks 'question'/'answer' (has {sorted(r)})")
        try:
            gold = parse_gold(r["answer"])
        except ValueError as e:
            raise DataError(f"GSM8K {split} row {i}: {e}") from None
        problems.append(Problem(i, r["question"], r["answer"], gold))
    if not problems:
        raise DataError(f"GSM8K {split} split is empty ({path or hub_name})")
    return problems


def train_subset(problems: list[Problem], max_samples: int | None, seed: int) -> list[Problem]:
    """The training pool: max_samples problems drawn by a seeded shuffle (all when None)."""
    if max_samples is None or max_samples >= len(problems):
        return list(problems)
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return [problems[i] for i in sorted(order[:max_samples])]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of range(n) used in one epoch."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def batch_for_step(pool: list[Problem], step: int, batch_size: int, seed: int) -> list[Problem]:
    """Problems of global step `step` (0-based): a pure function of (pool, step, batch, seed).

    Each epoch is a fresh permutation; the trailing n % batch_size problems of an epoch are dropped.
    With fewer problems than batch_size, problems repeat (cycle) so a batch is always full.
    """
    spe = steps_per_epoch(len(pool), batch_size)
    epoch, k = divmod(step, spe)
    order = epoch_order(len(pool), seed, epoch)
    idx = [order[(k * batch_size + j) % len(pool)] for j in range(batch_size)]
    return [pool[i] for i in idx]
