"""The FSDP2 trainer: loss (pure), batching, model wrapping, checkpoints, and the recipe."""
