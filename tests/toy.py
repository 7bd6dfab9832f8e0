"""A learnable toy task for the real recipe: "answer with the digit 7".

A character-level tokenizer of 16 tokens (digits, space, newline, <unk>, <|im_start|>, <|im_end|>)
with its own chat template, a tiny random Qwen2 model over it, and a GSM8K-format data dir whose
every answer is '#### 7'. With the lenient GSM8K reward (last number), a random model is right a
few percent of the time, so groups carry signal and GRPO can push the reward towards 1.
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "\n": 3, " ": 4}
    vocab.update({str(d): 5 + d for d in range(10)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<unk>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = TEMPLATE
    return fast


def make_model_dir(dest: Path, seed: int = 0, init_range: float = 0.02) -> Path:
    """init_range: the weights' init std. At 0.02 the tied embeddings are so small that logits differ by
    < 1 whatever the decoder layers do: only training the embeddings can make the model sure of a digit
    (LoRA, which trains the decoder layers only, needs a larger init to learn the toy task)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = make_tokenizer()
    cfg = Qwen2Config(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=2, bos_token_id=1, pad_token_id=0,
                      initializer_range=init_range)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    GenerationConfig(eos_token_id=[2], pad_token_id=0).save_pretrained(dest)
    return dest


def make_data_dir(dest: Path, n_train: int = 64, n_test: int = 16) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(dest / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"question": f"{i % 10} {i // 10}", "answer": "#### 7"}) + "\n")
    return dest


def toy_config(model_dir: Path, data_dir: Path, out_dir: Path, **extra) -> dict:
    """A complete run config (for --config) for the toy task; extra: dotted keys -> values."""
    cfg = {
        "experiment_name": "toy", "output_dir": str(out_dir), "seed": 0,
        "model": {"path": str(model_dir)},
        "data": {"path": str(data_dir), "instruction": ""},
        "rollout": {"engine": "hf", "n": 8, "max_new_tokens": 1},
        "algorithm": {"reward_mode": "lenient", "filter_groups": False},
        "optimizer": {"lr": 0.003, "warmup_steps": 0},
        "trainer": {"batch_size": 8, "device": "cpu", "max_steps": 30},
        "checkpoint": {"every": 0},
        "eval": {"at_end": False},
        "logging": {"wandb": "disabled"},
    }
    for key, value in extra.items():
        cur = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = value
    return cfg


def write_toy(tmp: Path, **extra) -> Path:
    """Model, data and config under tmp; returns the config file path."""
    import yaml

    model = tmp / "model" if (tmp / "model").exists() else make_model_dir(tmp / "model")
    data = make_data_dir(tmp / "data")
    path = tmp / "toy.yaml"
    path.write_text(yaml.safe_dump(toy_config(model, data, tmp / "runs", **extra)))
    return path
