"""Prompts to conditioning: tokenizer, text encoders, prompt weighting, SDXL vectors, ``Condition``."""
