"""GSM8K loading (dir / file / parquet / builtin forms, one-line DataErrors), the seeded training order,
and the chat prompt + stop tokens built from the shipped Qwen2.5 tokenizer."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from conftest import needs_shared
from gsm8k_grpo import assets
from gsm8k_grpo.config import DataConfig
from gsm8k_grpo.data import prompts
from gsm8k_grpo.data.gsm8k import (
    DataError,
    Problem,
    batch_for_step,
    load_split,
    steps_per_epoch,
    train_subset,
)

QWEN = "builtin:qwen2.5-0.5b-instruct"
IM_END, ENDOFTEXT = 151645, 151643
INT_RE = re.compile(r"-?\d+")


def _raw_rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


def _hash_line(answer: str) -> str:
    return re.findall(r"####[ \t]*([^\n]*)", answer)[-1].strip()


@pytest.fixture(scope="module")
def shared_splits():
    root = needs_shared()
    return root, load_split("train", str(root)), load_split("test", str(root))


def _data_error(split: str, path) -> str:
    with pytest.raises(DataError) as ei:
        load_split(split, str(path))
    msg = str(ei.value)
    assert msg and "\n" not in msg, f"DataError must be one line: {msg!r}"
    return msg


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


GOOD = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}


# ----------------------------------------------------------------------------- loading


def test_shared_dir_form_sizes_and_integer_gold(shared_splits):
    _, train, test = shared_splits
    assert (len(train), len(test)) == (7473, 1319)
    for split in (train, test):
        assert all(isinstance(p, Problem) for p in split)
        assert [p.idx for p in split] == list(range(len(split)))
        bad = [(p.idx, p.gold) for p in split if not INT_RE.fullmatch(p.gold)]
        assert not bad, f"non-integer gold strings: {bad[:5]}"


def test_shared_comma_answers_parse(shared_splits):
    root, train, test = shared_splits
    for name, problems, expected in (("train", train, 79), ("test", test, 14)):
        raw = _raw_rows(root / f"{name}.jsonl")
        comma = [(i, _hash_line(r["answer"])) for i, r in enumerate(raw) if "," in _hash_line(r["answer"])]
        assert len(comma) == expected
        for i, text in comma:
            assert problems[i].gold == text.replace(",", ""), (name, i, text, problems[i].gold)
    # the '#### 1,080' row of train (line 346 of train.jsonl)
    rows_1080 = [i for i, r in enumerate(_raw_rows(root / "train.jsonl")) if _hash_line(r["answer"]) == "1,080"]
    assert rows_1080 and all(train[i].gold == "1080" for i in rows_1080)


def test_shared_file_form_finds_test_next_to_it(shared_splits):
    root, train, test = shared_splits
    f = str(root / "train.jsonl")
    assert load_split("train", f) == train
    assert load_split("test", f) == test


def test_parquet_copy_loads_identically(shared_splits, tmp_path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pytest.skip("pyarrow not importable (it comes with `datasets`); parquet path untested here")
    root, train, test = shared_splits
    for name in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(_raw_rows(root / f"{name}.jsonl")), tmp_path / f"{name}.parquet")
    assert load_split("train", str(tmp_path)) == train
    assert load_split("test", str(tmp_path)) == test
    # file form with parquet: test.parquet found next to train.parquet
    assert load_split("test", str(tmp_path / "train.parquet")) == test


def test_builtin_sample():
    train, test = load_split("train", "builtin:gsm8k"), load_split("test", "builtin:gsm8k")
    assert (len(train), len(test)) == (64, 32)
    assert all(INT_RE.fullmatch(p.gold) for p in train + test)


def test_missing_path(tmp_path):
    msg = _data_error("train", tmp_path / "nope")
    assert "does not exist" in msg and "nope" in msg


def test_dir_without_test_split(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [GOOD])
    assert len(load_split("train", str(tmp_path))) == 1
    msg = _data_error("test", tmp_path)
    assert "test" in msg
    # file form: no sibling test file either
    msg = _data_error("test", tmp_path / "train.jsonl")
    assert "test" in msg


def test_malformed_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{not json\n")
    msg = _data_error("train", tmp_path)
    assert f"{f}:3" in msg


def test_row_without_answer(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [GOOD, {"question": "no answer here"}])
    msg = _data_error("train", tmp_path)
    assert "answer" in msg and "row 1" in msg


def test_unknown_split():
    msg = _data_error("validation", "builtin:gsm8k")
    assert "validation" in msg and "train" in msg and "test" in msg


# ----------------------------------------------------------------------------- training order


def _pool(n: int) -> list[Problem]:
    return [Problem(i, f"q{i}", f"#### {i}", str(i)) for i in range(n)]


def test_train_subset_seeded():
    pool = _pool(100)
    a, b = train_subset(pool, 10, seed=0), train_subset(pool, 10, seed=0)
    assert a == b and len(a) == 10
    assert len(set(p.idx for p in a)) == 10 and all(p in pool for p in a)
    assert [p.idx for p in a] == sorted(p.idx for p in a)
    assert train_subset(pool, 10, seed=1) != a
    assert train_subset(pool, None, seed=0) == pool
    assert train_subset(pool, 1000, seed=0) == pool


def test_batch_for_step_pure_and_epoch_permutation():
    pool = _pool(20)
    bs, seed = 8, 3
    assert steps_per_epoch(20, bs) == 2
    batches = {s: batch_for_step(pool, s, bs, seed) for s in (3, 0, 2, 1)}  # order of calls must not matter
    for s in range(4):
        assert batch_for_step(pool, s, bs, seed) == batches[s]
        assert len(batches[s]) == bs
    epochs = []
    for e in (0, 1):
        seen = [p.idx for s in (2 * e, 2 * e + 1) for p in batches[s]]
        assert len(seen) == 16 and len(set(seen)) == 16, f"epoch {e} repeats a problem: {seen}"  # 4 dropped
        epochs.append(seen)
    assert epochs[0] != epochs[1], "each epoch is a fresh permutation"
    assert batch_for_step(pool, 0, bs, seed + 1) != batches[0]


def test_batch_for_step_cycles_small_pool():
    pool = _pool(3)
    for step in range(3):
        b = batch_for_step(pool, step, 8, seed=0)
        assert len(b) == 8
        assert {p.idx for p in b} == {0, 1, 2}
        assert all(b[j] == b[j % 3] for j in range(8))
        assert max(Counter(p.idx for p in b).values()) - min(Counter(p.idx for p in b).values()) <= 1


# ----------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def qwen_tok():
    from gsm8k_grpo.modeling import load_tokenizer

    return load_tokenizer(QWEN)


def test_encode_renders_qwen_chat_template(qwen_tok):
    q = "Natalia sold clips to 48 of her friends. How many clips did she sell?"
    instr = DataConfig().instruction
    ids = prompts.encode(qwen_tok, q, instr)
    text = qwen_tok.decode(ids)
    assert ids == qwen_tok(text, add_special_tokens=False)["input_ids"]
    assert text.startswith("<|im_start|>system\n")  # the template's default system turn
    assert f"<|im_start|>user\n{q}\n{instr}<|im_end|>\n" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>assistant\n") == 1

    custom = qwen_tok.decode(prompts.encode(qwen_tok, q, instr, system_prompt="Be terse."))
    assert custom.startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n")
    assert qwen_tok.decode(prompts.encode(qwen_tok, q, "")).endswith(f"user\n{q}<|im_end|>\n<|im_start|>assistant\n")


def test_stop_token_ids_qwen(qwen_tok):
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(assets.resolve(QWEN))
    with_gen = prompts.stop_token_ids(qwen_tok, gen)
    assert sorted(with_gen) == sorted({IM_END, ENDOFTEXT}) and len(with_gen) == 2
    alone = prompts.stop_token_ids(qwen_tok)  # no generation_config: template end-of-turn + tokenizer eos
    assert IM_END in alone and set(alone) <= {IM_END, ENDOFTEXT} and len(set(alone)) == len(alone)
