"""gsm8k-grpo: GRPO fine-tuning of small LLMs on GSM8K (SGLang rollouts, FSDP2 trainer)."""

__version__ = "0.1.0"
