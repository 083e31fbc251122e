"""bpho: tracked deep-learning super-resolution and denoising for microscopy."""

__version__ = "0.2.0"
