"""UnityVideo's two-stream diffusion transformer, built from diffusers' Wan parts.

The RGB video and one modality video are denoised side by side. Conceptually their token grids are
concatenated along the width, giving an (f, h, 2w) grid with the modality in columns w..2w-1 (this is
what the RoPE positions encode). In memory the sequence is kept *stream-major* instead: all RGB
tokens, then all modality tokens. Self-attention, norms and the FFN act per token and attention is
order-free once positions are in the rotary tables, so the result is the same, while each stream is
a plain slice: cross-attention runs both streams as one batch of 2B sequences (each stream against
its own prompt) with no gather or scatter per block.

The keys and values of cross-attention depend only on the texts and the weights, not on the latents or the
timestep. Inside `cache_text_projections()` (the pipelines' denoising loop) they are computed once per text and
reused at every step: the same operations on the same inputs, so the result is bit-identical.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformer3DModel,
    WanTransformerBlock,
)
from diffusers.utils import BaseOutput, apply_lora_scale
from torch.distributed.tensor import DTensor

from ..modalities import RELEASED_MODALITIES, resolve_modality
from ..tasks import TASK_NAMES, resolve_task
from .control_encoder import UnityVideoControlEncoder
from .quantization import keep_unquantized
from .single_file import FromReleasedCheckpointMixin


@dataclass
class UnityVideoTransformerOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(B, C, F, H, W)`): velocity of the RGB stream.
        modality_sample (`torch.Tensor` of shape `(B, C, F, H, W)`, *optional*): velocity of the modality
            stream, `None` when the model ran on RGB alone.
    """

    sample: torch.Tensor
    modality_sample: torch.Tensor | None = None


class Float64Timesteps(nn.Module):
    """Wan's sinusoidal timestep embedding, `[cos, sin](t * 10000^(-i/half))`, evaluated in float64.

    The authors' code evaluates it in float64 too; diffusers' float32 `Timesteps` differs by ~5e-6, and an
    integer timestep is never truncated here.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if timesteps.device.type == "mps" else torch.float64
        half = self.num_channels // 2
        frequencies = torch.pow(10000.0, -torch.arange(half, dtype=dtype, device=timesteps.device) / half)
        angles = timesteps.to(dtype)[:, None] * frequencies[None]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def cross_attention_key_value(attn: WanAttention, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention keys (RMS-normed) and values of `text` (S, L, D), split into heads: (S, L, heads, head_dim)
    each. The operations of diffusers' `WanAttnProcessor` for a text-only cross-attention, in the same order."""
    if attn.fused_projections:
        key, value = attn.to_kv(text).chunk(2, dim=-1)
    else:
        key, value = attn.to_k(text), attn.to_v(text)
    key = attn.norm_k(key)
    return key.unflatten(2, (attn.heads, -1)), value.unflatten(2, (attn.heads, -1))


class UnityVideoCrossAttnProcessor(WanAttnProcessor):
    """
    `WanAttnProcessor` for text cross-attention that can take the text's keys and values precomputed
    (`text_key_value`, from `cross_attention_key_value`), so that they are projected once per denoising call rather
    than at every step. Attention goes through diffusers' backend dispatch (`set_attention_backend` applies).
    """

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        text_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if attn.add_k_proj is not None or rotary_emb is not None:
            raise ValueError("UnityVideoCrossAttnProcessor serves text cross-attention only (no image keys, no RoPE).")
        key, value = text_key_value or cross_attention_key_value(attn, encoder_hidden_states)
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=None,
        )
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


class UnityVideoRotaryPosEmbed(WanRotaryPosEmbed):
    """Wan's 3D RoPE for `num_streams` grids side by side: stream k holds width positions k*w .. (k+1)*w - 1.

    Returns `(cos, sin)` of shape `(1, num_streams * f * h * w, 1, head_dim)` in stream-major token order.
    """

    def forward(self, hidden_states: torch.Tensor, num_streams: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        grid = (num_frames // p_t, height // p_h, width // p_w)
        return self._table(self.freqs_cos, grid, num_streams), self._table(self.freqs_sin, grid, num_streams)

    def _table(self, freqs: torch.Tensor, grid: tuple[int, int, int], num_streams: int) -> torch.Tensor:
        f, h, w = grid
        t_part, h_part, w_part = freqs.split([self.t_dim, self.h_dim, self.w_dim], dim=1)
        shape = (num_streams, f, h, w, -1)
        table = torch.cat(
            [
                t_part[:f].view(1, f, 1, 1, -1).expand(shape),
                h_part[:h].view(1, 1, h, 1, -1).expand(shape),
                w_part[: num_streams * w].view(num_streams, 1, 1, w, -1).expand(shape),
            ],
            dim=-1,
        )
        return table.reshape(1, num_streams * f * h * w, 1, -1)


class UnityVideoTransformerBlock(WanTransformerBlock):
    r"""
    A Wan block over several streams of equal length: self-attention and FFN on the joint sequence, cross-attention
    of each stream to its own text. The parameters are exactly `WanTransformerBlock`'s (same keys), plus the
    optional modality-aware AdaLN table: one zero-initialised (6, dim) offset per modality, added to the shared
    modulation of the modality stream's tokens.
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: str = "rms_norm_across_heads",
        cross_attn_norm: bool = False,
        eps: float = 1e-6,
        num_modality_tables: int = 0,
    ):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        self.attn2.set_processor(UnityVideoCrossAttnProcessor())
        self.modality_scale_shift_table = (
            nn.Parameter(torch.zeros(num_modality_tables, 6, dim)) if num_modality_tables else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        modality_ids: torch.LongTensor | None = None,
        text_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """
        hidden_states (B, K*N, D): K streams of N tokens, stream-major. encoder_hidden_states (B, K, L, D): the text
        of each stream. temb (B, 6, D) per sample, or (B, T, 6, D) per token with T = N (shared by the streams)
        or T = K*N. modality_ids (B,): selects the AdaLN table rows of the modality stream (stream 1).
        text_key_value: this block's cross-attention keys and values of the texts (`text_key_value()`), when
        precomputed.
        """
        batch_size, seq_len, dim = hidden_states.shape
        num_streams = encoder_hidden_states.shape[1]
        streams = hidden_states.view(batch_size, num_streams, seq_len // num_streams, dim)

        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = self._modulation(
            temb, num_streams, seq_len // num_streams, modality_ids
        ).unbind(-2)

        # 1. Self-attention over all streams
        norm_hidden_states = (self.norm1(streams.float()) * (1 + scale_msa) + shift_msa).type_as(streams)
        attn_output = self.attn1(norm_hidden_states.flatten(1, 2), None, None, rotary_emb)
        streams = (streams.float() + attn_output.view_as(streams) * gate_msa).type_as(streams)

        # 2. Cross-attention: every stream to its own text, as B*K independent sequences
        norm_hidden_states = self.norm2(streams.float()).type_as(streams)
        precomputed = {} if text_key_value is None else {"text_key_value": text_key_value}
        attn_output = self.attn2(
            norm_hidden_states.flatten(0, 1), encoder_hidden_states.flatten(0, 1), None, None, **precomputed
        )
        streams = streams + attn_output.view_as(streams)

        # 3. Feed-forward
        norm_hidden_states = (self.norm3(streams.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(streams)
        ff_output = self.ffn(norm_hidden_states)
        streams = (streams.float() + ff_output.float() * c_gate_msa).type_as(streams)

        return streams.flatten(1, 2)

    def text_key_value(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention keys and values of the texts (B, K, L, D), as `forward` computes them."""
        return cross_attention_key_value(self.attn2, encoder_hidden_states.flatten(0, 1))

    def _modulation(
        self, temb: torch.Tensor, num_streams: int, tokens: int, modality_ids: torch.LongTensor | None
    ) -> torch.Tensor:
        """Shift/scale/gate values broadcastable to (B, K, N, 6, D)."""
        temb = temb[:, None, None] if temb.ndim == 3 else temb.unflatten(1, (-1, tokens))
        modulation = self.scale_shift_table + temb.float()
        if self.modality_scale_shift_table is not None and modality_ids is not None and num_streams == 2:
            modality_rows = self.modality_scale_shift_table[modality_ids]
            per_stream = torch.stack([torch.zeros_like(modality_rows), modality_rows], dim=1)
            modulation = modulation + per_stream[:, :, None].float()
        return modulation


def _version(tensor: torch.Tensor) -> int | None:
    """A tensor's in-place modification counter; `None` for inference tensors, which keep none."""
    return None if tensor.is_inference() else tensor._version


def _module_state(module: nn.Module) -> list:
    """What a module's output depends on besides its input: its parameters (identity, data, in-place edits) and, for
    PEFT LoRA layers, the active adapters, their scales (`attention_kwargs={"scale": ...}`, `set_adapters`) and
    whether they are merged or disabled. Checked at every step: a plain layer takes the short way."""
    if not module._modules:
        return [(id(p), _version(p), p.data_ptr()) for p in module._parameters.values() if p is not None]
    state = []
    for sub in module.modules():
        if hasattr(sub, "scaling") and hasattr(sub, "active_adapters"):
            state.append(
                (
                    tuple(sub.active_adapters),
                    sub.disable_adapters,
                    tuple(sub.merged_adapters),
                    tuple(sorted(sub.scaling.items())),
                )
            )
    state.extend((id(p), _version(p), p.data_ptr()) for p in module.parameters())  # moves and casts: new data
    return state


@dataclass
class _TextProjections:
    """The text embedding (B, K, L, D) and every block's cross-attention keys and values of one set of texts."""

    texts: tuple[weakref.ref | None, ...]  # the texts as passed to forward, not kept alive by the cache
    key: tuple  # what else they depend on: the texts' modification counters, the layers' state
    encoder_hidden_states: torch.Tensor
    key_values: list[tuple[torch.Tensor, torch.Tensor]]

    def alive(self) -> bool:
        return all(ref is None or ref() is not None for ref in self.texts)

    def serves(self, texts: tuple[torch.Tensor | None, ...], key: tuple) -> bool:
        same = all(
            (ref is None and t is None) or (ref is not None and ref() is t) for ref, t in zip(self.texts, texts)
        )
        return same and self.key == key


@dataclass
class TextProjectionCache:
    """The texts' projections computed inside one `cache_text_projections()` context (one denoising call). An entry
    whose text was freed can serve no later call and is dropped, so passing new texts at every call costs no memory."""

    entries: list[_TextProjections] = field(default_factory=list)

    def find(self, texts: tuple[torch.Tensor | None, ...], key: tuple) -> _TextProjections | None:
        self.entries = [entry for entry in self.entries if entry.alive()]
        return next((entry for entry in self.entries if entry.serves(texts, key)), None)


def _resolve_or_none(resolve, name):
    try:
        return resolve(name)
    except ValueError:
        return None


TransformerBlockRegistry.register(
    model_class=UnityVideoTransformerBlock,
    metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
)


class UnityVideoTransformer3DModel(
    ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin, FromReleasedCheckpointMixin
):
    r"""
    The UnityVideo transformer: Wan2.2's DiT denoising an RGB latent and, optionally, a modality latent jointly.

    Key names are diffusers' `WanTransformer3DModel` ones, so Wan2.2 weights and Wan LoRAs load directly; the
    modality stream adds `control_encoder.*` (its input layer), `modality_proj_out` and
    `modality_scale_shift_table` (its output head, a mirror of the RGB one). `from_single_file` loads the authors'
    released checkpoint directly.

    Args:
        patch_size, num_attention_heads, attention_head_dim, in_channels, out_channels, text_dim, freq_dim, ffn_dim,
        num_layers, cross_attn_norm, qk_norm, eps, rope_max_seq_len: as in `WanTransformer3DModel`. The defaults
            are the released 5B model (Wan2.2-TI2V-5B).
        modalities (`list[str]`): modalities with an identity embedding; list order defines modality ids.
        modality_adaln (`bool`): the paper's modality-aware AdaLN table (a per-block, per-modality offset of the
            modulation of modality tokens). Zero-initialised; the released checkpoint has none.
        task_embedding (`bool`): a learned embedding of the task (joint / control / perception) added to the time
            embedding. Zero-initialised; the released checkpoint has none.
    """

    _supports_gradient_checkpointing = True
    # as with quantization (models/quantization.py), the modality input and head keep their dtype under fp8 storage:
    # on a small random model that halves the modality stream's error (0.044 -> 0.020, float8_e4m3fn storage)
    _skip_layerwise_casting_patterns = [
        "patch_embedding",
        "condition_embedder",
        "norm",
        "modality_embeddings",
        "control_encoder",
        "modality_proj_out",
    ]
    _no_split_modules = ["UnityVideoTransformerBlock"]
    _keep_in_fp32_modules = [
        "rope",
        "time_embedder",
        "scale_shift_table",
        "modality_scale_shift_table",
        "norm1",
        "norm2",
        "norm3",
    ]
    _keys_to_ignore_on_load_unexpected = ["norm_added_q"]
    _repeated_blocks = ["UnityVideoTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        in_channels: int = 48,
        out_channels: int = 48,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 14336,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        modalities: Sequence[str] = RELEASED_MODALITIES,
        modality_adaln: bool = False,
        task_embedding: bool = False,
    ) -> None:
        super().__init__()
        if len(set(modalities)) != len(modalities) or not all(m.isidentifier() for m in modalities):
            raise ValueError(f"`modalities` must be distinct identifiers, got {list(modalities)}.")
        inner_dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels

        self.rope = UnityVideoRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        self.control_encoder = UnityVideoControlEncoder(in_channels, inner_dim, patch_size, list(modalities))

        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=inner_dim, time_freq_dim=freq_dim, time_proj_dim=inner_dim * 6, text_embed_dim=text_dim
        )
        self.condition_embedder.timesteps_proj = Float64Timesteps(freq_dim)
        self.task_embedder = nn.Embedding(len(TASK_NAMES), inner_dim) if task_embedding else None
        if self.task_embedder is not None:
            nn.init.zeros_(self.task_embedder.weight)

        num_modality_tables = len(modalities) if modality_adaln else 0
        self.blocks = nn.ModuleList(
            [
                UnityVideoTransformerBlock(
                    inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps, num_modality_tables
                )
                for _ in range(num_layers)
            ]
        )

        self.norm_out = FP32LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)
        self.modality_proj_out = nn.Linear(inner_dim, out_channels * math.prod(patch_size))
        self.modality_scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)

        self.gradient_checkpointing = False
        self._text_cache: TextProjectionCache | None = None

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """
        diffusers' `from_pretrained`. A `quantization_config` (here or from a pipeline's
        `PipelineQuantizationConfig`) that names no modules to skip leaves the time/text embedding, the modality
        input and the two output heads unquantized (`models/quantization.py` says why).
        """
        if kwargs.get("quantization_config") is not None:
            kwargs["quantization_config"] = keep_unquantized(kwargs["quantization_config"])
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_wan(
        cls,
        wan_transformer: WanTransformer3DModel,
        modalities: Sequence[str] = RELEASED_MODALITIES,
        modality_adaln: bool = False,
        task_embedding: bool = False,
    ) -> UnityVideoTransformer3DModel:
        """
        Start a UnityVideo model from a plain diffusers `WanTransformer3DModel` (e.g. Wan2.2-TI2V-5B-Diffusers) with
        the authors' initialisation of the added modules: the modality patch embedding and output head copy the RGB
        ones, the modality projection and identity embeddings are zero. With no modality stream the result computes
        exactly what the Wan model computes.

        The Wan model's tensors are taken over, not copied (no second 10 GB in memory): keep using the returned model,
        not the Wan one.
        """
        wan_config = wan_transformer.config
        if wan_config.get("image_dim") is not None or wan_config.get("added_kv_proj_dim") is not None:
            raise ValueError(
                "from_wan takes a text(-image)-to-video Wan model without an image encoder branch (e.g. TI2V-5B)."
            )
        shared_keys = [
            "patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "rope_max_seq_len",
        ]  # fmt: skip
        config = {key: wan_config[key] for key in shared_keys}
        modalities = [_resolve_or_none(resolve_modality, name) or name for name in modalities]
        with torch.device("meta"):
            model = cls(**config, modalities=modalities, modality_adaln=modality_adaln, task_embedding=task_embedding)
        model.rope = UnityVideoRotaryPosEmbed(
            config["attention_head_dim"], config["patch_size"], config["rope_max_seq_len"]
        )
        model.rope.to(wan_transformer.rope.freqs_cos.device)

        missing, unexpected = model.load_state_dict(wan_transformer.state_dict(), strict=False, assign=True)
        if unexpected:
            raise ValueError(f"Wan weights without a place in UnityVideo: {unexpected[:8]}")
        # the authors' initialisation: copies of the RGB input and output layers, everything else zero
        copies = {
            "control_encoder.patch_embedding.weight": wan_transformer.patch_embedding.weight,
            "control_encoder.patch_embedding.bias": wan_transformer.patch_embedding.bias,
            "modality_proj_out.weight": wan_transformer.proj_out.weight,
            "modality_proj_out.bias": wan_transformer.proj_out.bias,
            "modality_scale_shift_table": wan_transformer.scale_shift_table,
        }

        def initial_value(key: str) -> torch.Tensor:
            if key in copies:
                return copies[key].detach().clone()
            # modulation tables follow Wan's (kept in fp32), other parameters its weights
            like = wan_transformer.scale_shift_table if "scale_shift_table" in key else wan_transformer.proj_out.weight
            return torch.zeros(model.get_parameter(key).shape, dtype=like.dtype, device=like.device)

        model.load_state_dict({key: initial_value(key) for key in missing}, strict=False, assign=True)
        return model.train(wan_transformer.training)

    def add_modality(self, name: str) -> None:
        """Add a new modality with a zero identity embedding (and zero AdaLN rows), ready to be fine-tuned."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"A new modality needs an identifier-like name, got {name!r}.")
        if name in self.config.modalities:
            raise ValueError(f"Modality {name!r} is already part of this model.")
        self.control_encoder.add_modality(name)
        for block in self.blocks:
            table = block.modality_scale_shift_table
            if table is not None:
                grown = torch.cat([table.data, torch.zeros_like(table.data[:1])])
                block.modality_scale_shift_table = nn.Parameter(grown, requires_grad=table.requires_grad)
        self.register_to_config(modalities=[*self.config.modalities, name])

    # ------------------------------------------------------------------ reuse across denoising steps

    @contextmanager
    def cache_text_projections(self) -> Iterator[TextProjectionCache | None]:
        """
        Within this context, forward passes without gradients compute the text embedding and every block's
        cross-attention keys and values once per set of texts and reuse them. A denoising loop calls the model with
        the same texts at every step, so this saves 2 * num_layers projections of L text tokens per step, with
        bit-identical results. A text is recognised as the same tensor object, unmodified; any change of the weights
        involved or of LoRA scales, adapters or merging computes anew. Left out: training (gradients), sharded
        (FSDP) weights, group offloading enabled on entry (the projections run outside the blocks' onload hooks), attention processors
        other than `UnityVideoCrossAttnProcessor` and inference-mode tensors (no modification counter). The cache
        is emptied on exit.
        """
        # the projections run outside the blocks' forward, so outside the hooks that bring a block's weights in:
        # block-level offloading's, and FSDP's all-gather of sharded weights
        sharded = isinstance(next(self.blocks[0].parameters()), DTensor)
        cache = None if _is_group_offload_enabled(self) or sharded else TextProjectionCache()
        outer, self._text_cache = self._text_cache, cache
        try:
            yield self._text_cache
        finally:
            self._text_cache = outer

    def _cached_text_projections(
        self, rgb_text: torch.Tensor, modality_text: torch.Tensor | None, num_streams: int
    ) -> _TextProjections | None:
        """The projections of the stream texts as passed to forward, from the cache, computed on a miss; `None` when
        there is no cache or it cannot serve this call."""
        if (
            self._text_cache is None
            or torch.is_grad_enabled()
            or not all(isinstance(block.attn2.processor, UnityVideoCrossAttnProcessor) for block in self.blocks)
        ):
            return None
        texts = (rgb_text, modality_text)
        state = [(_version(text),) for text in texts if text is not None]
        for module in self._text_projection_modules():
            state.extend(_module_state(module))
        if any(None in item for item in state):
            return None
        key = (num_streams, tuple(state))
        entry = self._text_cache.find(texts, key)
        if entry is None:
            encoder_hidden_states = self._embed_texts(rgb_text, modality_text, num_streams)
            key_values = [block.text_key_value(encoder_hidden_states) for block in self.blocks]
            refs = tuple(None if text is None else weakref.ref(text) for text in texts)
            entry = _TextProjections(refs, key, encoder_hidden_states, key_values)
            self._text_cache.entries.append(entry)
        return entry

    def _text_projection_modules(self) -> list[nn.Module]:
        """The layers between a text and its cross-attention keys and values."""
        modules = [self.condition_embedder.text_embedder]
        for block in self.blocks:
            attn = block.attn2
            modules += [attn.to_kv] if attn.fused_projections else [attn.to_k, attn.to_v]
            modules.append(attn.norm_k)
        return modules

    def _embed_texts(
        self, rgb_text: torch.Tensor, modality_text: torch.Tensor | None, num_streams: int
    ) -> torch.Tensor:
        """The text of each stream, embedded: (B, K, L, D). Without a modality text the RGB text serves both."""
        texts = [rgb_text] if num_streams == 1 else [rgb_text, rgb_text if modality_text is None else modality_text]
        return self.condition_embedder.text_embedder(torch.stack(texts, dim=1))

    # ------------------------------------------------------------------ forward

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        modality_hidden_states: torch.Tensor | None = None,
        modality_encoder_hidden_states: torch.Tensor | None = None,
        modality: str | Sequence[str] | torch.LongTensor | None = None,
        task: str | Sequence[str] | torch.LongTensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> UnityVideoTransformerOutput | tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(B, C, F, H, W)`): RGB latents.
            timestep (`torch.Tensor`): in [0, 1000]; shape `(B,)` (one per sample, shared by both streams as in the
                release), `(B, N)` with N the tokens of one stream (per-token, e.g. a clean first frame as in
                Wan2.2 TI2V; shared by both streams), or `(B, 2N)` (RGB tokens then modality tokens). A scalar
                is broadcast to the batch.
            encoder_hidden_states (`torch.Tensor` of shape `(B, L, text_dim)`): the RGB stream's text.
            modality_hidden_states (`torch.Tensor`, *optional*): modality latents, shaped like `hidden_states`.
                `None` runs the RGB stream alone (plain Wan text-to-video).
            modality_encoder_hidden_states (`torch.Tensor`, *optional*): the modality stream's text (the modality's
                fixed prompt). `None` lets the RGB text serve both streams.
            modality: name, list of names (one per sample), or LongTensor of ids into `config.modalities`; selects
                the identity embedding of the modality stream. `None` adds none.
            task: name(s) or ids of the task (`joint`, `control`, `perception`); used only by a model with
                `task_embedding=True`.
            attention_kwargs (`dict`, *optional*): `{"scale": s}` scales LoRA layers.
            return_dict (`bool`): return a [`UnityVideoTransformerOutput`] instead of a tuple.
        """
        latent_shape = hidden_states.shape
        num_streams = 1 if modality_hidden_states is None else 2
        self._check_inputs(
            hidden_states, modality_hidden_states, encoder_hidden_states, modality_encoder_hidden_states
        )
        timestep = self._check_timestep(timestep, latent_shape, num_streams)
        device = hidden_states.device
        modality_ids = self._ids(
            modality, latent_shape[0], self.config.modalities, self.resolve_modality_name, "modality", device
        )
        task_ids = self._ids(task, latent_shape[0], TASK_NAMES, lambda name: resolve_task(name).name, "task", device)

        # 1. Tokens of each stream, stream-major, and their RoPE positions on the side-by-side grid
        rotary_emb = self.rope(hidden_states, num_streams)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2)
        if modality_hidden_states is not None:
            modality_tokens = self.control_encoder(modality_hidden_states, modality_ids)
            hidden_states = torch.cat([hidden_states, modality_tokens], dim=1)
        hidden_states = hidden_states.contiguous()

        # 2. Text of each stream (B, K, L, D) and, when cached, every block's keys and values of it; time embedding
        # shared by the streams
        cached = self._cached_text_projections(encoder_hidden_states, modality_encoder_hidden_states, num_streams)
        if cached is None:
            encoder_hidden_states = self._embed_texts(
                encoder_hidden_states, modality_encoder_hidden_states, num_streams
            )
            text_key_values = [None] * len(self.blocks)
        else:
            encoder_hidden_states, text_key_values = cached.encoder_hidden_states, cached.key_values
        temb, timestep_proj = self._embed_timestep(timestep, task_ids, encoder_hidden_states.dtype)

        # 3. Transformer blocks
        for block, text_key_value in zip(self.blocks, text_key_values):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, modality_ids
                )
            else:
                hidden_states = block(
                    hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, modality_ids, text_key_value
                )

        # 4. One output head per stream
        rgb_tokens, *modality_tokens = hidden_states.chunk(num_streams, dim=1)
        # a per-token temb over both streams (B, 2N, D) gives each head its own half
        per_stream = temb.ndim == 3 and temb.shape[1] == hidden_states.shape[1]
        stream_temb = temb.chunk(num_streams, dim=1) if per_stream else [temb] * num_streams
        sample = self._output_head(rgb_tokens, stream_temb[0], self.proj_out, self.scale_shift_table, latent_shape)
        modality_sample = None
        if modality_tokens:
            modality_sample = self._output_head(
                modality_tokens[0],
                stream_temb[1],
                self.modality_proj_out,
                self.modality_scale_shift_table,
                latent_shape,
            )

        if not return_dict:
            return (sample, modality_sample)
        return UnityVideoTransformerOutput(sample=sample, modality_sample=modality_sample)

    def _embed_timestep(
        self, timestep: torch.Tensor, task_ids: torch.LongTensor | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep (B,) or (B, T) -> temb (B[, T], D) for the heads and its projection (B[, T], 6, D) for the blocks."""
        embedder = self.condition_embedder
        sinusoid = embedder.timesteps_proj(timestep.flatten())
        time_embedder_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        if time_embedder_dtype != torch.int8:
            sinusoid = sinusoid.to(time_embedder_dtype)
        temb = embedder.time_embedder(sinusoid).unflatten(0, timestep.shape).to(dtype)
        if self.task_embedder is not None and task_ids is not None:
            task_emb = self.task_embedder(task_ids).to(dtype)
            temb = temb + task_emb.view(task_emb.shape[0], *([1] * (temb.ndim - 2)), -1)
        timestep_proj = embedder.time_proj(embedder.act_fn(temb)).unflatten(-1, (6, -1))
        return temb, timestep_proj

    def _output_head(
        self,
        tokens: torch.Tensor,
        temb: torch.Tensor,
        proj_out: nn.Linear,
        scale_shift_table: torch.Tensor,
        latent_shape: torch.Size,
    ) -> torch.Tensor:
        """Modulated norm and projection of one stream's tokens, unpatchified to (B, C, F, H, W)."""
        if temb.ndim == 3:  # per token: (B, N, D)
            shift, scale = (scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).unbind(2)
        else:  # per sample: (B, D)
            shift, scale = (scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(tokens.device), scale.to(tokens.device)
        tokens = (self.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        tokens = proj_out(tokens)

        batch_size, _, num_frames, height, width = latent_shape
        p_t, p_h, p_w = self.config.patch_size
        tokens = tokens.reshape(batch_size, num_frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        return tokens.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    # ------------------------------------------------------------------ input checks

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        modality_hidden_states: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        modality_encoder_hidden_states: torch.Tensor | None,
    ) -> None:
        config = self.config
        if hidden_states.ndim != 5 or hidden_states.shape[1] != config.in_channels:
            raise ValueError(
                f"`hidden_states` must be (B, {config.in_channels}, F, H, W) latents, got {tuple(hidden_states.shape)}."
            )
        grid = [size // patch for size, patch in zip(hidden_states.shape[2:], config.patch_size)]
        if any(size % patch for size, patch in zip(hidden_states.shape[2:], config.patch_size)) or min(grid) == 0:
            raise ValueError(
                f"Latent size (F, H, W) = {tuple(hidden_states.shape[2:])} does not fit the patch grid "
                f"{tuple(config.patch_size)}: each must be a positive multiple of its patch size."
            )
        num_streams = 1 if modality_hidden_states is None else 2
        if max(grid[0], grid[1], grid[2] * num_streams) > config.rope_max_seq_len:
            raise ValueError(
                f"Token grid (f, h, {num_streams}*w) = ({grid[0]}, {grid[1]}, {grid[2] * num_streams}) exceeds "
                f"rope_max_seq_len={config.rope_max_seq_len}."
            )
        if modality_hidden_states is not None and modality_hidden_states.shape != hidden_states.shape:
            raise ValueError(
                f"`modality_hidden_states` {tuple(modality_hidden_states.shape)} must have the shape of "
                f"`hidden_states` {tuple(hidden_states.shape)}."
            )
        texts = {"encoder_hidden_states": encoder_hidden_states}
        if modality_encoder_hidden_states is not None:
            if modality_hidden_states is None:
                raise ValueError("`modality_encoder_hidden_states` was given without `modality_hidden_states`.")
            texts["modality_encoder_hidden_states"] = modality_encoder_hidden_states
        for name, text in texts.items():
            if text.ndim != 3 or text.shape[0] != hidden_states.shape[0] or text.shape[2] != config.text_dim:
                raise ValueError(
                    f"`{name}` must be (B={hidden_states.shape[0]}, L, {config.text_dim}), got {tuple(text.shape)}."
                )
        if (
            modality_encoder_hidden_states is not None
            and modality_encoder_hidden_states.shape != encoder_hidden_states.shape
        ):
            raise ValueError(
                "The two streams' texts must have the same length: `encoder_hidden_states` "
                f"{tuple(encoder_hidden_states.shape)} vs `modality_encoder_hidden_states` "
                f"{tuple(modality_encoder_hidden_states.shape)} (encode both with the same max_sequence_length)."
            )

    def _check_timestep(
        self, timestep: torch.Tensor | float, latent_shape: torch.Size, num_streams: int
    ) -> torch.Tensor:
        batch_size = latent_shape[0]
        tokens = math.prod(size // patch for size, patch in zip(latent_shape[2:], self.config.patch_size))
        timestep = torch.as_tensor(timestep)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch_size)
        allowed = {(batch_size,), (batch_size, tokens), (batch_size, num_streams * tokens)}
        if tuple(timestep.shape) not in allowed:
            raise ValueError(
                f"`timestep` must have shape (B,), (B, N) or (B, {num_streams}N) with B={batch_size}, N={tokens} tokens "
                f"per stream; got {tuple(timestep.shape)}."
            )
        return timestep

    def resolve_modality_name(self, name: str) -> str:
        """This model's name for a modality (aliases such as "flow" resolved); raises naming the model's modalities."""
        known = list(self.config.modalities)
        canonical = name if name in known else _resolve_or_none(resolve_modality, name)
        if canonical not in known:
            raise ValueError(f"This model has no modality {name!r}; it has: {', '.join(known)}.")
        return canonical

    @staticmethod
    def _ids(value, batch_size: int, names: Sequence[str], resolve, kind: str, device) -> torch.LongTensor | None:
        """A name, a list of names (one per sample), or ids -> LongTensor (B,) of indices into `names`."""
        if value is None:
            return None
        names = list(names)
        if isinstance(value, torch.Tensor):
            ids = value.long().flatten()
            if ids.numel() == 1:
                ids = ids.expand(batch_size)
            if ids.numel() != batch_size or ids.min() < 0 or ids.max() >= len(names):
                raise ValueError(f"{kind} ids must be {batch_size} values in [0, {len(names)}), got {value.tolist()}.")
            return ids.to(device)
        values = [value] * batch_size if isinstance(value, str) else list(value)
        if len(values) != batch_size:
            raise ValueError(f"Got {len(values)} {kind} names for a batch of {batch_size}.")
        return torch.tensor([names.index(resolve(item)) for item in values], dtype=torch.long, device=device)
