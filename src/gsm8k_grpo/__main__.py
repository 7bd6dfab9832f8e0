from gsm8k_grpo.cli import main

main()
