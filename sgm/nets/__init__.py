"""The networks: UNet, autoencoder, attention blocks, CLIP text transformers (torch only)."""
