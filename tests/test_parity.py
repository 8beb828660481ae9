"""Forward parity with an independent reference of the released model (tests/reference_unityvideo.py).

The reference is written from the released model's description in the authors' layout and conventions (interleaved (f, h, 2w) sequence,
explicit per-stream cross-attention, complex float64 RoPE with DiffSynth's head split). Its random weights go
through our converter, so each case checks conversion and forward together. Tolerance: 1e-5 relative, fp32.
"""

from __future__ import annotations

import pytest
import torch
from conftest import reference_for, relative_error
from safetensors.torch import save_file

from unityvideo_diffusers import UnityVideoTransformer3DModel
from unityvideo_diffusers.conversion import convert_released_to_diffusers


MODALITIES = ["depth", "densepose", "raft", "segmentation", "skeleton"]
TOLERANCE = 1e-5
# head dims where DiffSynth's and diffusers' RoPE splits coincide (head_dim % 6 < 3)
CONFIGS = {
    "head_dim_24": dict(
        num_attention_heads=2,
        attention_head_dim=24,
        num_layers=2,
        ffn_dim=64,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=32,
    ),
    "head_dim_12": dict(
        num_attention_heads=3,
        attention_head_dim=12,
        num_layers=3,
        ffn_dim=40,
        in_channels=8,
        out_channels=8,
        text_dim=12,
        freq_dim=16,
    ),
    "head_dim_48": dict(
        num_attention_heads=1,
        attention_head_dim=48,
        num_layers=1,
        ffn_dim=96,
        in_channels=4,
        out_channels=4,
        text_dim=20,
        freq_dim=64,
    ),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    config = CONFIGS[request.param]
    reference = reference_for(config)
    folder = tmp_path_factory.mktemp(request.param)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, folder / "released.safetensors")
    convert_released_to_diffusers(
        folder / "released.safetensors",
        folder / "converted",
        transformer_config_overrides=config,
        dtype="fp32",
        transformer_only=True,
        progress=False,
    )
    model = UnityVideoTransformer3DModel.from_pretrained(folder / "converted").eval()
    return reference, model, config


def make_inputs(spec, batch, frames, height, width, seed=0, text_len=9):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, spec["in_channels"], frames, height, width)
    return (
        torch.randn(shape, generator=generator),
        torch.randn(shape, generator=generator),
        torch.rand(batch, generator=generator) * 1000,
        torch.randn(batch, text_len, spec["text_dim"], generator=generator),
        torch.randn(batch, text_len, spec["text_dim"], generator=generator),
    )


def compare(reference, model, inputs, modality, with_modality_prompt):
    rgb, mod, timestep, context, context_modality = inputs
    context_modality = context_modality if with_modality_prompt else None
    with torch.no_grad():
        expected_rgb, expected_mod = reference(rgb, mod, timestep, context, context_modality, modality)
        out = model(
            hidden_states=rgb,
            modality_hidden_states=mod,
            timestep=timestep,
            encoder_hidden_states=context,
            modality_encoder_hidden_states=context_modality,
            modality=modality,
        )
    return relative_error(out.sample, expected_rgb), relative_error(out.modality_sample, expected_mod)


@pytest.mark.parametrize("with_modality_prompt", [True, False], ids=["modality_prompt", "shared_prompt"])
@pytest.mark.parametrize("modality", MODALITIES)
def test_every_modality_batch_of_two(pair, modality, with_modality_prompt):
    reference, model, spec = pair
    errors = compare(reference, model, make_inputs(spec, 2, 3, 4, 6), modality, with_modality_prompt)
    assert max(errors) < TOLERANCE, errors


@pytest.mark.parametrize("grid", [(2, 6, 4), (1, 2, 10), (5, 8, 2)], ids=lambda g: "x".join(map(str, g)))
def test_non_square_grids(pair, grid):
    reference, model, spec = pair
    errors = compare(reference, model, make_inputs(spec, 2, *grid, seed=1), "raft", True)
    assert max(errors) < TOLERANCE, errors


def test_no_modality_identity(pair):
    reference, model, spec = pair
    errors = compare(reference, model, make_inputs(spec, 1, 3, 4, 4, seed=2), None, True)
    assert max(errors) < TOLERANCE, errors


def test_mixed_modalities_match_per_sample_reference(pair):
    reference, model, spec = pair
    rgb, mod, timestep, context, context_modality = make_inputs(spec, 3, 2, 4, 6, seed=3)
    names = ["skeleton", "depth", "densepose"]
    with torch.no_grad():
        out = model(rgb, timestep, context, mod, context_modality, modality=names)
        for i, name in enumerate(names):
            pick = slice(i, i + 1)
            expected_rgb, expected_mod = reference(
                rgb[pick], mod[pick], timestep[pick], context[pick], context_modality[pick], name
            )
            assert relative_error(out.sample[pick], expected_rgb) < TOLERANCE
            assert relative_error(out.modality_sample[pick], expected_mod) < TOLERANCE
