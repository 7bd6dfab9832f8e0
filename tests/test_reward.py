"""Tests for gsm8k_grpo.reward: answer extraction (strict/lenient), normalisation, gold parsing, scoring."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gsm8k_grpo.reward import (
    RewardResult,
    answers_match,
    extract_answer,
    has_boxed,
    normalize_number,
    parse_gold,
    score,
)

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"

# (id, completion, expected strict, expected lenient) -- completions in the style of Qwen2.5-0.5B-Instruct.
COMPLETIONS = [
    (
        "plain-boxed",
        "To find how much Janet makes, we first count the eggs she sells.\n\n"
        "Step 1: She uses 3 + 4 = 7 eggs a day.\nStep 2: 16 - 7 = 9 eggs are left.\n"
        "Step 3: 9 * $2 = $18.\n\nTherefore, the answer is \\boxed{18}.",
        "18", "18",
    ),
    (
        "qwen-display-math",
        "To determine how much Janet makes every day, we need to follow these steps:\n\n"
        "1. **Calculate the eggs left:**\n   \\[\n   16 - 3 - 4 = 9\n   \\]\n\n"
        "2. **Calculate the earnings:**\n   \\[\n   9 \\times 2 = 18\n   \\]\n\n"
        "Therefore, Janet makes \\(\\boxed{18}\\) dollars every day at the farmers' market.",
        "18", "18",
    ),
    (
        "boxed-escaped-dollar",
        "Weng earns $12 per hour, which is 12 / 60 = $0.2 per minute.\n"
        "For 50 minutes she earns 0.2 * 50 = $10.\n\nThe final answer is \\boxed{\\$10}.",
        "10", "10",
    ),
    (
        "boxed-number-then-text-unit",
        "Step 1: Each box holds 6 cookies.\nStep 2: 3 boxes hold 3 * 6 = 18 cookies.\n"
        "Step 3: At $1 each she earns $18.\n\nSo she earns \\boxed{18 \\text{ dollars}}.",
        "18", "18",
    ),
    (
        "boxed-text-wraps-number",
        "Betty needs $100 and has half, $50. Her parents give $15 and grandparents 2 * 15 = $30.\n"
        "She still needs 100 - 50 - 15 - 30 = $5.\n\n\\boxed{\\text{5 dollars}}",
        "5", "5",
    ),
    (
        "boxed-thousands-comma",
        "The monthly rent is $360, so for a year: 360 * 12 = 4,320.\n"
        "Minus the deposit of $3,240 gives 4,320 - 3,240 = 1,080.\n\nThe answer is \\boxed{1,080}.",
        "1080", "1080",
    ),
    (
        "boxed-dollar-thousands-cents",
        "Step 1: The car costs $1,200.\nStep 2: After a 10% discount: 1,200 * 0.9 = $1,080.\n\n"
        "Therefore, the answer is \\boxed{\\$1,080.00}.",
        "1080", "1080",
    ),
    (
        "boxed-latex-thousands",
        "The factory makes 150 toys an hour for 20 hours: 150 \\times 20 = 3{,}000.\n\n"
        "\\[\n\\boxed{3{,}000}\n\\]",
        "3000", "3000",
    ),
    (
        "several-boxed-take-last",
        "Step 1: Apples: \\boxed{12}.\nStep 2: Oranges: \\boxed{8}.\n"
        "Step 3: Total fruit: 12 + 8 = 20.\n\nTherefore, the answer is \\boxed{20}.",
        "20", "20",
    ),
    (
        "several-boxed-self-correction",
        "So the answer is \\boxed{24}.\n\nWait, I forgot the 6 pencils he gave away. 24 - 6 = 18.\n\n"
        "The correct answer is \\boxed{18}.",
        "18", "18",
    ),
    (
        "truncated-open-box-after-answer-is",
        "Natalia sold 48 / 2 = 24 clips in May.\nAltogether she sold 48 + 24 = 72 clips.\n\n"
        "Therefore, the answer is \\boxed{7",
        None, "72",
    ),
    (
        "truncated-mid-sentence",
        "To find the total, we first compute each part.\n\nStep 1: 12 * 5 = 60 minutes.\n"
        "Step 2: Now we add the 15 minutes from before to",
        None, "15",
    ),
    (
        "truncated-after-complete-box",
        "The total cost is 4 * 4.5 = 18 dollars.\n\nSo the answer is \\boxed{18}.\n\n"
        "Let me double-check: 4 * 4.5 = 18, so \\boxed{1",
        "18", "18",
    ),
    (
        "truncated-open-box-with-nested-brace",
        "Step 1: 3 * 7 = 21.\nStep 2: 21 + 4 = 25.\n\nThus the result is \\boxed{\\frac{50}{2",
        None, "25",
    ),
    (
        "hash-answer-line",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
        "72", "72",
    ),
    (
        "hash-thousands",
        "He runs 3 sprints of 60 meters 3 times a week: 3 * 3 * 60 = 540.\n"
        "Over 2 weeks: 540 * 2 = 1,080 meters.\n#### 1,080",
        "1080", "1080",
    ),
    (
        "hash-last-of-two",
        "First attempt: 5 + 5 = 10\n#### 10\nActually the question asks for 12 pens after buying 2 more.\n"
        "#### 12",
        "12", "12",
    ),
    (
        "hash-dollar-and-bold",
        "Each ticket costs $9 and she buys 2 tickets: 9 * 2 = 18.\n\n#### **$18**",
        "18", "18",
    ),
    (
        "markdown-headings-not-answers",
        "#### Step 1: Find the apples\nShe has 5 apples.\n#### Step 2: Add the oranges\n"
        "5 + 7 = 12 pieces of fruit.\n\nThe answer is 12.",
        "12", "12",
    ),
    (
        "markdown-headings-only",
        "#### Step 1: Count the red marbles\nThere are 5 red marbles.\n#### Step 2: Add the blue ones\n"
        "Total = 5 + 7 = 12",
        None, "12",
    ),
    (
        "final-answer-is-dollar",
        "Step 1: 6 * 7 = 42.\n\nThe final answer is $42.",
        "42", "42",
    ),
    (
        "answer-is-with-unit-and-tail",
        "Let's compute the number of apples step by step.\nShe picks 10 and buys 2 more.\n\n"
        "The answer is 12 apples, which is 2 more than 10.",
        "12", "12",  # lenient runs the strict rules first; its last-number fallback would say 10
    ),
    (
        "answer-is-last-occurrence",
        "At first I thought the answer is 10, but she also gets 2 from her brother.\n"
        "10 + 2 = 12.\nSo the answer is: 12.",
        "12", "12",
    ),
    (
        "answer-is-number-on-next-line",
        "Step 1: 3 friends each bring 6 cupcakes: 3 * 6 = 18.\n\nTherefore, the answer is:\n\n**18**",
        "18", "18",
    ),
    (
        "answer-is-uppercase",
        "Tom reads 6 pages a day for 3 days: 6 * 3 = 18.\nTHE ANSWER IS 18",
        "18", "18",
    ),
    (
        "answer-is-fraction",
        "The recipe needs 3 cups for 6 cookies, so 1 cookie needs 3 / 6 cups.\n\nThe answer is 1/2 cup.",
        "0.5", "0.5",
    ),
    (
        "boxed-negative",
        "The temperature starts at 5 degrees and drops 8 degrees.\n5 - 8 = -3.\n\n"
        "Therefore, the answer is \\boxed{-3}.",
        "-3", "-3",
    ),
    (
        "boxed-unicode-minus",
        "The balance is 20 - 23 = \u22123 dollars.\n\nSo the answer is \\boxed{\u22123}.",
        "-3", "-3",
    ),
    (
        "lenient-unicode-minus",
        "Starting at 4 degrees, the temperature falls by 7 degrees.\n"
        "The temperature at night is \u22123 degrees.",
        None, "-3",
    ),
    (
        "lenient-subtraction-not-negative",
        "She had 20 stickers and gave away 3.\nShe has 20-3",
        None, "3",
    ),
    (
        "boxed-decimal",
        "Each slice is 1 / 2 of the pie... so each child gets 0.5 pies.\n\nThe answer is \\boxed{0.5}.",
        "0.5", "0.5",
    ),
    (
        "boxed-frac-braced",
        "Half of the students like math.\n\nTherefore, the fraction is \\boxed{\\frac{1}{2}}.",
        "0.5", "0.5",
    ),
    (
        "boxed-frac-unbraced",
        "She eats one of two equal halves.\n\n\\boxed{\\frac12}",
        "0.5", "0.5",
    ),
    (
        "boxed-dfrac",
        "3 of the 4 slices are eaten, so \\(\\frac{3}{4}\\) of the pizza is gone.\n\n\\boxed{\\dfrac{3}{4}}",
        "0.75", "0.75",
    ),
    (
        "boxed-slash-fraction",
        "The tank is filled 2 of 4 parts.\n\nSo it is \\boxed{1/2} full.",
        "0.5", "0.5",
    ),
    (
        "boxed-frac-non-terminating",
        "He eats 1 of the 3 pieces.\n\nTherefore, he eats \\boxed{\\frac{1}{3}} of the cake.",
        "1/3", "1/3",
    ),
    (
        "boxed-percent",
        "The price went from $20 to $21, an increase of 1 / 20 = 5%.\n\nThe answer is \\boxed{5\\%}.",
        "5", "5",
    ),
    (
        "boxed-equation",
        "Let x be the number of dogs. Then 2x + 4 = 14, so x = 5.\n\n\\boxed{x=5}",
        "5", "5",
    ),
    (
        "boxed-chain-equation",
        "We multiply the two numbers.\n\n\\boxed{x = 2 \\times 9 = 18}",
        "18", "18",
    ),
    (
        "boxed-left-right",
        "The number of groups is 9 / 3.\n\n\\[\n\\boxed{\\left( 3 \\right)}\n\\]",
        "3", "3",
    ),
    (
        "boxed-space-before-brace",
        "Step 1: 6 * 7 = 42.\n\nTherefore, the answer is \\boxed {42}.",
        "42", "42",
    ),
    (
        "fbox",
        "Step 1: 6 * 7 = 42.\n\nTherefore, the answer is \\fbox{42}.",
        "42", "42",
    ),
    (
        "boxed-nested-braces",
        "The company earns 1,080 dollars.\n\n\\boxed{\\text{Total: } {1{,}080}}",
        "1080", "1080",
    ),
    (
        "boxed-trailing-zero-decimal",
        "Each of the 2 friends pays 14 / 2 = 7.0 dollars.\n\n\\boxed{7.0}",
        "7", "7",
    ),
    (
        "boxed-trailing-period-inside",
        "He walks 6 miles on each of 3 days, 18 miles in all.\n\n\\boxed{18.}",
        "18", "18",
    ),
    (
        "inline-math-boxed",
        "So the total number of legs is 4 * 4 + 2 * 1 = 18.\n\nThe answer is $\\boxed{18}$.",
        "18", "18",
    ),
    (
        "boxed-unit-exponent",
        "The garden is 5 meters by 10 meters, so its area is 5 * 10 = 50.\n\n\\boxed{50 \\text{ m}^2}",
        "50", "50",
    ),
    (
        "boxed-thousands-with-unit",
        "She saves $500 a month for 5 months: 500 * 5 = 2,500.\n\n\\boxed{2,500 \\text{ dollars}}",
        "2500", "2500",
    ),
    (
        "boxed-beats-hash-and-answer-is",
        "I first thought the answer is 20.\n#### 20\nBut the 2 broken eggs must be removed: 20 - 2 = 18.\n\n"
        "\\boxed{18}",
        "18", "18",
    ),
    (
        "hash-beats-answer-is",
        "The answer is 20.\nOops, I double counted 2 of them.\n#### 18",
        "18", "18",
    ),
    (
        "empty-box-falls-through-to-answer-is",
        "Step 1: 5 + 7 = 12.\n\nSo the answer is 12.\n\n\\boxed{}",
        "12", "12",
    ),
    (
        "empty-box-only",
        "Total = 5 + 7 = 12.\n\\boxed{ }",
        None, "12",
    ),
    (
        "box-without-number",
        "She runs on 3 days, and the third day is a Tuesday.\n\n\\boxed{\\text{Tuesday}}",
        None, "3",
    ),
    (
        "trailing-period-lenient",
        "She buys 3 packs of 6 pencils.\n3 * 6 = 18.\nSo she has 18.",
        None, "18",
    ),
    (
        "number-inside-word",
        "The race starts on day 1 and he trains 17 more days.\nHe finishes on the 18th",
        None, "18",
    ),
    (
        "list-like-commas",
        "We need the numbers in order. The numbers are 1,2,3",
        None, "3",
    ),
    (
        "lenient-thousands-dollars",
        "Step 1: 90 * 12 = 1,080.\nTotal: $1,080.00",
        None, "1080",
    ),
    (
        "no-number",
        "I'm sorry, but I cannot solve this problem without more information.",
        None, None,
    ),
    (
        "degenerate-repetition",
        "To find the answer we need to " + "think again and " * 200,
        None, None,
    ),
    (
        "degenerate-digit-run",
        "Step 1: 5 + 5 = " + "1" * 300,
        None, None,
    ),
]


@pytest.mark.parametrize(
    "completion, strict, lenient",
    [pytest.param(c, s, l, id=i) for i, c, s, l in COMPLETIONS],
)
def test_extract_answer(completion: str, strict: str | None, lenient: str | None) -> None:
    assert extract_answer(completion) == strict
    assert extract_answer(completion, "strict") == strict
    assert extract_answer(completion, "lenient") == lenient


def test_enough_completion_cases() -> None:
    assert len(COMPLETIONS) >= 45
    assert len({i for i, *_ in COMPLETIONS}) == len(COMPLETIONS)


def test_extract_answer_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        extract_answer("\\boxed{1}", "fuzzy")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("$1,080.00", "1080"),
        ("18 dollars", "18"),
        ("50%", "50"),
        ("-3", "-3"),
        ("\u22123", "-3"),
        ("0.5", "0.5"),
        (".5", "0.5"),
        ("\\frac{1}{2}", "0.5"),
        ("\\frac12", "0.5"),
        ("\\dfrac{3}{4}", "0.75"),
        ("\\tfrac{3}{4}", "0.75"),
        ("1/2", "0.5"),
        ("-1/2", "-0.5"),
        ("36/2", "18"),
        ("1/3", "1/3"),
        ("7.0", "7"),
        ("0.50", "0.5"),
        ("x = 12", "12"),
        ("2 \\times 9 = 18", "18"),
        ("\\text{18 dollars}", "18"),
        ("18 \\text{ dollars}", "18"),
        ("\\$18", "18"),
        ("5\\%", "5"),
        ("3{,}000", "3000"),
        ("\\left( 3 \\right)", "3"),
        ("18.", "18"),
        ("18th", "18"),
        ("1,2,3", "3"),
        ("50 \\text{ m}^2", "50"),
        ("0", "0"),
        ("", None),
        ("no number here", None),
        ("1/0", None),
        ("9" * 100, None),
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "answer_field, expected",
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
        ("So the total is 1,000 + 80 = <<1000+80=1080>>1080.\n#### 1,080", "1080"),
        ("It drops 3 below zero.\n#### -3", "-3"),
        ("#### 18 ", "18"),
        ("He pays $18.\n#### $18", "18"),
        ("First line\n#### 5\nsecond line\n#### 7", "7"),
    ],
)
def test_parse_gold(answer_field: str, expected: str) -> None:
    assert parse_gold(answer_field) == expected


@pytest.mark.parametrize(
    "answer_field",
    ["Natalia sold 72 clips altogether.", "", "### 72", "#### no number"],
)
def test_parse_gold_rejects_missing_answer(answer_field: str) -> None:
    with pytest.raises(ValueError, match="####"):
        parse_gold(answer_field)


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("18", "18.0", True),
        ("0.5", "1/2", True),
        ("36/2", "18", True),
        ("1,080", "1080", True),
        ("-3", "-3", True),
        ("3", "-3", False),
        ("17", "18", False),
        ("18.5", "18", False),
        (None, "18", False),
        ("", "18", False),
        ("eighteen", "18", False),
    ],
)
def test_answers_match(pred: str | None, gold: str, expected: bool) -> None:
    assert answers_match(pred, gold) is expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Therefore, the answer is \\boxed{18}.", True),
        ("\\boxed {18}", True),
        ("\\fbox{18}", True),
        ("\\boxed{\\text{Tuesday}}", True),
        ("\\boxed{}", False),
        ("\\boxed{   }", False),
        ("Therefore, the answer is \\boxed{18", False),
        ("The answer is 18.\n#### 18", False),
        ("", False),
    ],
)
def test_has_boxed(completion: str, expected: bool) -> None:
    assert has_boxed(completion) is expected


BOXED_18 = "Step 1: 9 * 2 = 18.\n\nThe answer is \\boxed{18}."
BOXED_20 = "Step 1: 9 * 2 = 20.\n\nThe answer is \\boxed{20}."


@pytest.mark.parametrize(
    "completion, gold, mode, bonus, expected",
    [
        (BOXED_18, "18", "strict", 0.0, RewardResult(1.0, True, True, "18")),
        (BOXED_18, "18", "strict", 0.1, RewardResult(1.1, True, True, "18")),
        (BOXED_20, "18", "strict", 0.1, RewardResult(0.1, False, True, "20")),
        ("9 * 2 = 18\n#### 18", "18", "strict", 0.1, RewardResult(1.0, True, False, "18")),
        ("So she earns 9 * 2 = 18.", "18", "strict", 0.1, RewardResult(0.0, False, False, None)),
        ("So she earns 9 * 2 = 18.", "18", "lenient", 0.1, RewardResult(1.0, True, False, "18")),
        ("The answer is \\boxed{\\$1,080.00}", "1080", "strict", 0.0, RewardResult(1.0, True, True, "1080")),
        ("The answer is \\boxed{18", "18", "lenient", 0.5, RewardResult(0.0, False, False, None)),
    ],
)
def test_score(completion: str, gold: str, mode: str, bonus: float, expected: RewardResult) -> None:
    result = score(completion, gold, mode=mode, format_bonus=bonus)
    assert result.correct == expected.correct
    assert result.has_format == expected.has_format
    assert result.extracted == expected.extracted
    assert result.reward == pytest.approx(expected.reward)


def test_score_default_is_strict_without_bonus() -> None:
    assert score("She has 18 apples.", "18") == RewardResult(0.0, False, False, None)
    assert score("\\boxed{18}", "18") == RewardResult(1.0, True, True, "18")


def test_reward_result_is_frozen() -> None:
    result = score("\\boxed{18}", "18")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.reward = 2.0  # type: ignore[misc]


def test_score_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError):
        score("\\boxed{18}", "18", mode="fuzzy")


def test_reward_imports_no_torch() -> None:
    code = "import sys, gsm8k_grpo.reward; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_degenerate_input_is_fast() -> None:
    nasty = "\\boxed{" * 5000 + "1," * 5000 + "{" * 5000 + "the answer is " * 1000
    start = time.perf_counter()
    extract_answer(nasty, "lenient")
    has_boxed(nasty)
    assert time.perf_counter() - start < 1.0


def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_parse_gold_on_full_gsm8k() -> None:
    if not GSM8K_DIR.is_dir():
        pytest.skip(f"../shared/data/gsm8k not present: {GSM8K_DIR} is missing; full-dataset check skipped")
    expected_rows = {"train": 7473, "test": 1319}
    comma_rows = {"train": 0, "test": 0}
    for split, n in expected_rows.items():
        rows = _read_jsonl(GSM8K_DIR / f"{split}.jsonl")
        assert len(rows) == n
        for row in rows:
            raw = row["answer"].rsplit("####", 1)[1].strip()
            gold = parse_gold(row["answer"])
            assert re.fullmatch(r"-?\d+", gold), (split, raw, gold)
            assert gold == str(int(raw.replace(",", ""))), (split, raw, gold)
            if "," in raw:
                comma_rows[split] += 1
                assert "," not in gold and len(gold) >= 4, (split, raw, gold)
    assert comma_rows["train"] == 79
