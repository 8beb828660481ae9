"""Tiny configurations shared by the tests. Everything is built from configs: no network, no weights."""

from __future__ import annotations

import pytest
import torch

from unityvideo_diffusers.testing import TINY_TRANSFORMER, randomize_parameters, tiny_pipeline_components  # noqa: F401


# the pipelines' tiny transformer with few latent channels, for model-only tests; its head_dim 24 is one where
# diffusers' and DiffSynth's RoPE splits agree (head_dim % 6 < 3)
TINY = {**TINY_TRANSFORMER, "in_channels": 4, "out_channels": 4, "text_dim": 16}
TEXT_LEN = 7


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def random_inputs(batch=2, frames=3, height=4, width=6, channels=4, text_dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, channels, frames, height, width)
    return dict(
        hidden_states=torch.randn(shape, generator=generator),
        modality_hidden_states=torch.randn(shape, generator=generator),
        timestep=torch.rand(batch, generator=generator) * 1000,
        encoder_hidden_states=torch.randn(batch, TEXT_LEN, text_dim, generator=generator),
        modality_encoder_hidden_states=torch.randn(batch, TEXT_LEN, text_dim, generator=generator),
    )


@pytest.fixture
def tiny_model():
    from unityvideo_diffusers import UnityVideoTransformer3DModel

    torch.manual_seed(0)
    return randomize_parameters(UnityVideoTransformer3DModel(**TINY)).eval()


def reference_for(config: dict, seed: int = 0):
    """The independent reference model with the sizes of a UnityVideoTransformer3DModel `config`, random weights."""
    from reference_unityvideo import ReferenceUnifiedWan, randomize_

    reference = ReferenceUnifiedWan(
        dim=config["num_attention_heads"] * config["attention_head_dim"],
        num_heads=config["num_attention_heads"],
        num_layers=config["num_layers"],
        ffn_dim=config["ffn_dim"],
        in_channels=config["in_channels"],
        out_channels=config["out_channels"],
        text_dim=config["text_dim"],
        freq_dim=config["freq_dim"],
    )
    return randomize_(reference, seed).eval()
