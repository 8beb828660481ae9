"""Tiny configurations shared by the tests. Everything is built from configs: no network, no weights."""

from __future__ import annotations

import pytest
import torch

# head_dim 24: diffusers' and DiffSynth's RoPE splits agree (head_dim % 6 < 3); see the reference file, section 10.
TINY = dict(
    num_attention_heads=2,
    attention_head_dim=24,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
)
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


def randomize_parameters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (zero-initialised ones too) random values, so nothing can pass by being zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.2 * noise)
    return model


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


# ---------------------------------------------------------------- tiny pipeline components (offline)

PIPELINE_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=24,
    in_channels=48,
    out_channels=48,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
)


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in code: any text tokenizes, nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["a red ball bouncing on a wooden floor", "depth map visualization optical flow segmentation skeleton"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_pipeline_components(seed: int = 0) -> dict:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from unityvideo_diffusers import UnityVideoTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    ).eval()  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, scale_factor_temporal=4,
        latents_mean=(torch.randn(48, generator=generator) * 0.1).tolist(),
        latents_std=(1 + torch.rand(48, generator=generator)).tolist(),
    ).eval()  # fmt: skip
    transformer = randomize_parameters(UnityVideoTransformer3DModel(**PIPELINE_TRANSFORMER), seed).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)
