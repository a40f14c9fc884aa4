"""Small models shared by the tests."""

from __future__ import annotations

import torch

from gdp_lightning.prior import create_model

TINY = dict(
    image_size=32,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    learn_sigma=True,
    attention_resolutions="16",
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
)


#: sampler settings for a random prior: its restorations are noise that explains nothing, which the divergence
#: check rightly flags; tests of the plumbing keep them (``on_divergence: keep``) instead of losing the outputs
KEEP = {"on_divergence": "keep"}


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a random value (the zero-initialised output layers would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _tiny(**overrides) -> torch.nn.Module:
    return _randomize(create_model(**{**TINY, **overrides})).eval()

