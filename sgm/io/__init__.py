"""Model files: state dicts, single-file checkpoints, format conversion, LoRA files, the model cache."""
