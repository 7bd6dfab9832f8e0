"""Chat prompts for GSM8K, built with the model's own chat template.

One user turn: the question, a newline, and the instruction (default: reason step by step and put
the final answer in \\boxed{}). Training, periodic eval and ``grpo eval`` all use this function, so
training reward and eval accuracy mean the same thing.
"""

from __future__ import annotations


def messages(question: str, instruction: str, system_prompt: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": f"{question}\n{instruction}" if instruction else question})
    return msgs


def encode(tokenizer, question: str, instruction: str, system_prompt: str | None = None) -> list[int]:
    """Prompt token ids (generation prompt included)."""
    text = tokenizer.apply_chat_template(
        messages(question, instruction, system_prompt), tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end an assistant turn: the template's end-of-turn token plus the model's eos ids.

    The end-of-turn token is found by rendering a turn and taking the first token after its content,
    so nothing model-specific is hard-coded.
    """
    ids: list[int] = []
    marker = "XQZ-END-PROBE"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        tail = text.split(marker, 1)[1]
        tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        if tail_ids and tail_ids[0] in special:
            ids.append(tail_ids[0])
    except Exception:
        pass
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if e is not None and e not in ids:
            ids.append(int(e))
    return ids
