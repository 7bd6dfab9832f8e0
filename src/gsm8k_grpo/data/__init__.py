"""GSM8K loading (data/gsm8k.py) and chat prompts (data/prompts.py)."""
