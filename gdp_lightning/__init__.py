"""gdp-lightning: image restoration with a pretrained diffusion model as the only prior (GDP)."""

__version__ = "0.1.0"
