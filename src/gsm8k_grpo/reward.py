r"""GSM8K answer extraction and 0/1 reward. Pure stdlib (no torch/numpy), so it is cheap to import anywhere.

Algorithm
---------
1. Gold: ``parse_gold`` takes the last ``#### N`` line of the dataset's ``answer`` field and normalises N.
2. Extraction picks exactly ONE candidate per completion (never "any candidate matches"):

   strict, first rule that yields a number wins:
     a. the LAST complete ``\boxed{...}`` / ``\fbox{...}`` (nested braces allowed, ``\boxed {..}`` too);
        an unclosed box (truncated output) or an empty box is not a box at all, and the text from an
        unclosed box on is ignored by the later rules too (its number may be cut short: "\boxed{7" of 72);
     b. else the last ``#### N`` (N must start like a number: digit, sign, '.', '$' or '\', optionally
        after markdown '**', so a heading such as ``#### Step 2: ...`` is not an answer line);
     c. else the first number after the last "answer is" (case-insensitive: "The final answer is $42.").
   lenient: the strict rules, then
     d. else the last number anywhere in the completion (before any unclosed box).

   The issue text says strict is "the last \boxed{} or a final #### N line only", while the extraction
   order lists "the answer is N" before the last-number fallback; we resolve it as above: "the answer
   is N" is an explicit statement of the answer, so it belongs to strict; only the guess-from-the-last-
   number fallback is lenient. If the last box holds no number (``\boxed{\text{Tuesday}}``) the
   rules b, c (and lenient's d) are tried; earlier boxes are never consulted.
3. Normalisation (``normalize_number``): LaTeX is flattened (``\frac{a}{b}``/``\dfrac``/``\frac12`` ->
   ``a/b``, ``3{,}000`` -> ``3,000``, ``\text{..}``/``\left``/``\$``/``\%`` and other commands dropped,
   unit exponents like ``m^2`` dropped, U+2212 minus -> '-'); then the part after the last '=' is
   kept and its LAST number token is taken. A token is ``-?digits`` with thousands separators only as
   ',' + exactly 3 digits (so "1,2,3" is three numbers), an optional decimal part, optionally
   ``/ denominator``. The value is a ``fractions.Fraction`` rendered canonically: integers without
   decimals ("7.0" -> "7"), terminating values as a plain decimal ("1/2" -> "0.5"), and values with no
   finite decimal expansion as an exact "p/q" (e.g. "1/3"), so equal numbers give equal strings.
4. ``answers_match`` compares exactly via Fraction; ``score`` gives 1.0 for a match plus ``format_bonus``
   when the completion has a complete, non-empty box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

_MAX_TOKEN_CHARS = 64  # longer digit runs are degenerate output, not answers (and int() caps at 4300 digits)

_SIGN = r"(?:(?<![\w)])-)?"  # a '-' right after a word char or ')' is subtraction, not a sign
_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\d.])\.\d+)"
_NUMBER_RE = re.compile(rf"{_SIGN}{_UNSIGNED}(?:\s*/\s*{_UNSIGNED})?")
_BOX_START_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASH_RE = re.compile(r"####[ \t]*(?=\**[ \t]*[-\u2212$\\.\d])([^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer\s+is\b", re.IGNORECASE)

_FRAC_BRACED_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_DIGITS_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_UNIT_EXPONENT_RE = re.compile(r"(?<=[A-Za-z}])\s*\^\s*(?:\{[^{}]*\}|\d)")


def _flatten_latex(s: str) -> str:
    """Turn LaTeX-ish answer text into plain text whose numbers the token regex can read."""
    s = s.replace("\u2212", "-").replace("{,}", ",")
    s = _FRAC_BRACED_RE.sub(r" \1/\2 ", s)
    s = _FRAC_DIGITS_RE.sub(r" \1/\2 ", s)
    s = re.sub(r"\\[A-Za-z]+", " ", s)  # \text, \left, \right, \times, \mathrm, ...
    s = _UNIT_EXPONENT_RE.sub(" ", s)  # m^2, \text{cm}^{3}
    s = re.sub(r"\\.", " ", s)  # \$, \%, \, and other one-char escapes
    return re.sub(r"[{}$%]", " ", s)


def _to_fraction(token: str) -> Fraction | None:
    token = token.replace(",", "").replace(" ", "")
    if len(token) > _MAX_TOKEN_CHARS:
        return None
    try:
        if "/" in token:
            num, den = token.split("/")
            return Fraction(num) / Fraction(den)
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def _render(q: Fraction) -> str:
    """Canonical string: '1080', '-3', '0.5', '0.75', or exact 'p/q' when the decimal does not terminate."""
    if q.denominator == 1:
        return str(q.numerator)
    den, twos, fives = q.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{q.numerator}/{q.denominator}"
    places = max(twos, fives)  # minimal, so the last digit is non-zero
    digits = str(abs(q.numerator) * 10**places // q.denominator).rjust(places + 1, "0")
    sign = "-" if q < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _render_token(token: str) -> str | None:
    q = _to_fraction(token)
    return None if q is None else _render(q)


def _number_tokens(text: str) -> list[str]:
    return _NUMBER_RE.findall(_flatten_latex(text))


def normalize_number(s: str) -> str | None:
    """Canonical number string for an answer snippet: last number after the last '='; None if none."""
    tokens = _number_tokens(s.rsplit("=", 1)[-1])
    return _render_token(tokens[-1]) if tokens else None


def parse_gold(answer_field: str) -> str:
    """Normalised gold number from the final '#### N' line of a GSM8K 'answer' field."""
    lines = re.findall(r"####[ \t]*([^\n]*)", answer_field)
    if not lines:
        raise ValueError(f"GSM8K answer has no '#### N' line: {answer_field[-80:]!r}")
    gold = normalize_number(lines[-1])
    if gold is None:
        raise ValueError(f"GSM8K answer's '####' line holds no number: {lines[-1]!r}")
    return gold


def _scan_boxes(completion: str) -> tuple[list[str], int]:
    """Complete, non-blank \\boxed{...}/\\fbox{...} contents (in order of opening) and the index where
    the first unclosed box starts (len(completion) if none).

    One pass over the braces with a stack, so nested braces work and truncated output stays linear.
    """
    box_at = {m.end() - 1: m.start() for m in _BOX_START_RE.finditer(completion)}  # '{' index -> '\\'
    if not box_at:
        return [], len(completion)
    stack: list[int] = []
    found: list[tuple[int, str]] = []
    for m in re.finditer(r"[{}]", completion):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            start = stack.pop()
            content = completion[start + 1 : m.start()]
            if start in box_at and content.strip():
                found.append((start, content))
    unclosed = [box_at[i] for i in stack if i in box_at]
    return [content for _, content in sorted(found)], min(unclosed, default=len(completion))


def has_boxed(completion: str) -> bool:
    """Format check: the completion has a complete \\boxed{...} with non-blank content."""
    return bool(_scan_boxes(completion)[0])


_TEXT_BLOCK_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}")
_EXPRESSION_RE = re.compile(r"(?<![A-Za-z])[A-Za-z]\s*[-+*/^]\s*[\d.]|[\d.]\s*[-+*/^]\s*[A-Za-z](?![A-Za-z])")


def _is_expression(box: str) -> bool:
    """An algebraic answer such as 'L-8' or '3+x': a variable, not a number (unit words don't count)."""
    tail = _TEXT_BLOCK_RE.sub(" ", box).rsplit("=", 1)[-1]
    return bool(_EXPRESSION_RE.search(re.sub(r"\\[A-Za-z]+", " ", tail)))


def _strict(completion: str, boxes: list[str]) -> str | None:
    if boxes and not _is_expression(boxes[-1]) and (answer := normalize_number(boxes[-1])) is not None:
        return answer
    hashes = _HASH_RE.findall(completion)
    if hashes and (answer := normalize_number(hashes[-1])) is not None:
        return answer
    phrases = list(_ANSWER_IS_RE.finditer(completion))
    if phrases:
        tokens = _number_tokens(completion[phrases[-1].end() :])
        if tokens:
            return _render_token(tokens[0])
    return None


def extract_answer(completion: str, mode: Literal["strict", "lenient"] = "strict") -> str | None:
    """The one normalised answer of a completion (see the module docstring for the rules), or None."""
    if mode not in ("strict", "lenient"):
        raise ValueError(f"mode must be 'strict' or 'lenient', not {mode!r}")
    boxes, cut = _scan_boxes(completion)
    text = completion[:cut]  # an unclosed box is truncated output: its partial number is no evidence
    answer = _strict(text, boxes)
    if answer is None and mode == "lenient":
        tokens = _number_tokens(text)
        answer = _render_token(tokens[-1]) if tokens else None
    return answer


def answers_match(pred: str | None, gold: str) -> bool:
    """Exact numeric equality ('18' == '18.0' == '36/2'); None never matches."""
    if pred is None:
        return False
    a, b = _to_fraction(pred.strip()), _to_fraction(gold.strip())
    if a is None:
        a = _to_fraction(normalize_number(pred) or "")
    if b is None:
        b = _to_fraction(normalize_number(gold) or "")
    return a is not None and a == b


@dataclass(frozen=True)
class RewardResult:
    reward: float
    correct: bool
    has_format: bool
    extracted: str | None


def score(completion: str, gold: str, mode: str = "strict", format_bonus: float = 0.0) -> RewardResult:
    """Reward 1.0 if the extracted answer equals gold (already normalised), plus format_bonus if boxed."""
    extracted = extract_answer(completion, mode)  # type: ignore[arg-type]
    correct = answers_match(extracted, gold)
    has_format = has_boxed(completion)
    reward = (1.0 if correct else 0.0) + (format_bonus if has_format else 0.0)
    return RewardResult(reward=reward, correct=correct, has_format=has_format, extracted=extracted)
