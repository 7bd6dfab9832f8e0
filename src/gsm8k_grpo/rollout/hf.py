"""In-process transformers engine: the CPU path, and the fallback where SGLang cannot run.

Batched ``generate`` with left padding, sampling from the plain distribution (temperature, top_p;
no top-k, no repetition penalty), stopping at the given stop ids. Log-probs are
log_softmax(logits / temperature) of each sampled token, the same quantity the trainer computes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gsm8k_grpo.logprobs import head_logprobs
from gsm8k_grpo.modeling import load_causal_lm
from gsm8k_grpo.rollout.base import Completion, EngineError, SamplingParams


class HFEngine:
    def __init__(self, model_dir: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 64, pad_token_id: int = 0):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = load_causal_lm(model_dir, dtype=dtype, device=self.device).eval()
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.weight_version = 0

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        flat = [p for p in prompts for _ in range(params.n)]  # prompt i's samples are contiguous
        out: list[Completion] = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for i in range(0, len(flat), self.batch_size):
                out.extend(self._generate_batch(flat[i:i + self.batch_size], params))
        return [out[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):  # left padding
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        greedy = params.temperature == 0
        gen_cfg = GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p, top_k=None, repetition_penalty=None,
            max_new_tokens=params.max_new_tokens, eos_token_id=list(params.stop_token_ids) or None,
            pad_token_id=self.pad_token_id, return_dict_in_generate=True,
        )
        res = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  generation_config=gen_cfg)
        new = res.sequences[:, width:].cpu()                         # [b, t]
        stops = set(params.stop_token_ids)
        ends = []
        for r in range(new.shape[0]):
            toks = new[r].tolist()
            end = next((j + 1 for j, t in enumerate(toks) if t in stops), None)
            ends.append((end, "stop") if end is not None else (min(len(toks), params.max_new_tokens), "length"))
        logp = self._token_logprobs(ids, mask, new, [e for e, _ in ends], params.temperature or 1.0)
        return [Completion(new[r, :end].tolist(), logp[r, :end].tolist(), reason, self.weight_version)
                for r, (end, reason) in enumerate(ends)]

    def _token_logprobs(self, ids, mask, new, ends: list[int], temperature: float,
                        chunk: int = 1024) -> torch.Tensor:
        """log_softmax(logits / T) of each generated token, from one forward over prompt + completion.

        Recomputing is cheaper in memory than keeping generate()'s per-step logits
        (batch x new tokens x vocab floats: ~20 GB at 64 x 512 x 151,936).
        """
        b, width = ids.shape
        gen_mask = (torch.arange(new.shape[1])[None, :] < torch.tensor(ends)[:, None]).long()
        full = torch.cat([ids, new], 1).to(self.device)
        attn = torch.cat([mask, gen_mask], 1).to(self.device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)                      # as generate() numbers left-padded rows
        hidden = self.model.model(input_ids=full, attention_mask=attn, position_ids=pos).last_hidden_state
        h = hidden[:, width - 1:-1].reshape(-1, hidden.shape[-1])    # [b * t, H]: position predicts the next
        tgt = new.reshape(-1).to(self.device)
        logp, _ = head_logprobs(h, self.model.get_output_embeddings(), tgt, temperature, chunk)
        return logp.view(b, -1).cpu()

    # ------------------------------------------------------------------ weights
    def load_weights_from_disk(self, path: str, version: int) -> None:
        from safetensors.torch import load_file

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise EngineError(f"no .safetensors files in {path}")
        sd = {}
        for f in files:
            sd.update(load_file(str(f)))
        self.load_state_dict(sd, version)

    def load_state_dict(self, sd: dict[str, torch.Tensor], version: int) -> None:
        res = self.model.load_state_dict(sd, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        missing = set(res.missing_keys) - tied
        if missing or res.unexpected_keys:
            raise EngineError(f"weights do not fit the model: missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(res.unexpected_keys)[:3]}")
        self.weight_version = version

    def close(self) -> None:
        self.model = None
