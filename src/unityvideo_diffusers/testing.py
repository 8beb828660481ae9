"""Tiny, offline pipeline components for tests, examples and benchmarks: nothing is downloaded."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from .models import UnityVideoTransformer3DModel


def randomize_parameters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (zero-initialised ones too) random values, so nothing passes by being zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.2 * noise)
    return model


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in code: any text tokenizes."""

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["a red ball bouncing on a wooden floor", "depth map visualization optical flow segmentation skeleton"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


TINY_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=24,
    in_channels=48,
    out_channels=48,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
)


def tiny_pipeline_components(seed: int = 0, transformer_config: dict | None = None, randomize: bool = True) -> dict:
    """tokenizer, UMT5 text encoder, Wan2.2-style VAE (z_dim 48, 16x spatial, 4x temporal), transformer, scheduler."""

    config = {**TINY_TRANSFORMER, **(transformer_config or {})}
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=config["text_dim"],
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=config["in_channels"],
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=(torch.randn(config["in_channels"], generator=generator) * 0.1).tolist(),
        latents_std=(1 + torch.rand(config["in_channels"], generator=generator)).tolist(),
    ).eval()
    transformer = UnityVideoTransformer3DModel(**config).eval()
    if randomize:
        randomize_parameters(transformer, seed)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)
