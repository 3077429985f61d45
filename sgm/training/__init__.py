"""Training: a plain resumable loop and the VAE, diffusion and LoRA tasks it runs."""
