"""What the three UnityVideo pipelines share: components, text and video encoding, checks, and the one denoising loop.

A job is a choice of noisy streams (see `tasks.py`): the loop steps every noisy stream with its own copy of the
scheduler (multistep schedulers keep per-stream history) and feeds every clean stream unchanged, all at the noisy
streams' shared timestep, as the model was trained.
"""

from __future__ import annotations

import copy
import functools
import itertools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

from ..hub import push_folder
from ..modalities import modality_prompt
from ..models import UnityVideoTransformer3DModel
from ..sampling import resolve_sampling_defaults, trained_size
from ..schedulers import scheduler_by_name
from ..schedulers.flow_matching import check_flow_scheduler, keep_flow_shift
from ..tasks import Task, resolve_task
from ..validation import check_model_source, check_size
from ..video_io import VideoInput, as_video_list, load_frames, prepare_video
from .lora_loader import UnityVideoLoraLoaderMixin


WAN_TEXT_LENGTH = 512  # UMT5 tokens per text in Wan and in the released UnityVideo
OUTPUT_TYPES = ("np", "pil", "pt", "latent")
DEFAULT_WINDOW_OVERLAP = 8  # video frames a window shares with the previous one (2 latent frames)

logger = logging.get_logger(__name__)


@dataclass
class Hold:
    """Latent frames of a noisy stream pinned to `target`: after each step, `keep * latents + (1 - keep) * target`.
    `keep` (1, 1, F', 1, 1) is 0 on fully held frames and 1 on free ones."""

    target: torch.Tensor
    keep: torch.Tensor

    def apply(self, latents: torch.Tensor) -> torch.Tensor:
        return self.keep * latents + (1 - self.keep) * self.target


def own_aligned_memory(module: torch.nn.Module) -> None:
    """Weights read from safetensors files on the CPU are views of the mapped file, at offsets that CPU kernels may
    take as misaligned and then sum in another order (fp32 outputs 1e-6 off). Copy them into freshly allocated
    memory, so that a saved and reloaded pipeline computes bit for bit what the original did. One tensor at a time:
    the copy costs no more memory than the largest weight."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()


def _onednn_conv3d(conv: torch.nn.Conv3d, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    plain_float32 = type(weight) in (torch.Tensor, torch.nn.Parameter) and input.dtype == weight.dtype == torch.float32
    if input.device.type != "cpu" or not plain_float32 or torch.compiler.is_compiling():
        return torch.nn.Conv3d._conv_forward(conv, input, weight, bias)
    input = input.contiguous(memory_format=torch.channels_last_3d)
    return torch.ops.aten.mkldnn_convolution(
        input, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups
    )


@contextmanager
def conv3d_through_onednn(module: torch.nn.Module) -> Iterator[None]:
    """Run `module`'s float32 3-D convolutions on the CPU through oneDNN, on channels-last activations.

    PyTorch sends a float32 3-D convolution at batch 1 on a small input to its reference kernel (unfold, then one
    matrix multiply), which is where a small VAE spends most of its time. Channels-last activations also make the
    Wan VAE's normalisation over channels a contiguous reduction. The demo model's encode and decode take half to
    three quarters of the time. Sums are taken in another order, so outputs move by about 1e-6. Other devices and
    dtypes, and a compiled VAE (the compiler picks its own kernels), keep PyTorch's own choice."""
    convolutions = []
    if torch.backends.mkldnn.is_available():
        convolutions = [
            m
            for m in module.modules()
            if isinstance(m, torch.nn.Conv3d) and m.padding_mode == "zeros" and not isinstance(m.padding, str)
        ]
    for conv in convolutions:
        conv._conv_forward = functools.partial(_onednn_conv3d, conv)
    try:
        yield
    finally:
        for conv in convolutions:
            del conv._conv_forward


def window_plan(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) latent-frame windows of length `window` covering `num_frames`, consecutive ones sharing at least
    `overlap` frames; the last one ends at the last frame."""
    if num_frames <= window:
        return [(0, num_frames)]
    if not 0 <= overlap < window:
        raise ValueError(f"The window overlap ({overlap} latent frames) must be smaller than the window ({window}).")
    starts = list(range(0, num_frames - window, window - overlap)) + [num_frames - window]
    return [(start, start + window) for start in starts]


class UnityVideoBasePipeline(DiffusionPipeline, UnityVideoLoraLoaderMixin):
    r"""
    Components: `tokenizer` and `text_encoder` (UMT5; optional when every text is passed pre-encoded), `transformer`
    ([`UnityVideoTransformer3DModel`]), `vae` ([`AutoencoderKLWan`], Wan2.2) and `scheduler` (any diffusers
    flow-matching scheduler).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    # Work reused across denoising steps; set on an instance to change it.
    # The texts' cross-attention keys and values, projected once per call: bit-identical, on by default.
    reuse_text_projections = True
    # Guidance's conditional and unconditional passes as one forward of twice the batch: fewer, larger kernels, but
    # not bit-identical to two passes (fp32 matrix products of another size round differently in the last bits,
    # ~1e-6 relative on CPU), so it is opt-in.
    batch_guidance = False
    _callback_tensor_inputs = ["latents", "modality_latents", "prompt_embeds", "negative_prompt_embeds"]
    _optional_components = ["tokenizer", "text_encoder"]

    # UMT5 prompt encoding exactly as diffusers' Wan pipelines do it (padding embeddings zeroed, no mask)
    _get_t5_prompt_embeds = WanPipeline._get_t5_prompt_embeds

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | None,
        text_encoder: UMT5EncoderModel | None,
        transformer: UnityVideoTransformer3DModel,
        vae: AutoencoderKLWan,
        scheduler,
        sampling_defaults: dict | None = None,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
        )
        resolve_sampling_defaults(sampling_defaults)  # a folder with wrong defaults is refused when it loads
        self.register_to_config(sampling_defaults=sampling_defaults)
        # a job's own scheduler in the defaults applies while the scheduler is this one, not one the user chose
        self._folder_scheduler = scheduler
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal if vae is not None else 4
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial if vae is not None else 16
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)
        self._modality_prompt_cache: dict[tuple, torch.Tensor] = {}
        self._step_memo: dict[tuple, tuple] = {}

    def __setattr__(self, name: str, value: Any):
        """A scheduler is checked when set, at construction too: it must sample a flow-matching model, and one that
        replaces another keeps the other's flow shift unless it chose its own (see `schedulers/flow_matching.py`)."""
        if name == "scheduler" and value is not None:
            check_flow_scheduler(value)
            previous = self.__dict__.get("scheduler")
            value = value if previous is None else keep_flow_shift(previous, value)
        super().__setattr__(name, value)

    @classmethod
    def from_pipe(cls, pipeline, **components):
        """
        Another UnityVideo job on the same components: no copies, dtypes and devices as they are (diffusers'
        `from_pipe` casts everything to float32 unless given a dtype, fp32-kept modules included), the same sampling
        defaults, and the modality prompt cache shared. Components can be replaced, e.g. `text_encoder=None,
        tokenizer=None`.
        """
        if not isinstance(pipeline, UnityVideoBasePipeline):
            return super().from_pipe(pipeline, **components)
        names = ("tokenizer", "text_encoder", "transformer", "vae", "scheduler")
        unknown = sorted(set(components) - set(names))
        if unknown:
            raise TypeError(f"from_pipe takes components ({', '.join(names)}), not {unknown}.")
        new = cls(
            **{name: components.get(name, getattr(pipeline, name)) for name in names},
            sampling_defaults=pipeline.config.sampling_defaults,
        )
        new._modality_prompt_cache = pipeline._modality_prompt_cache
        new._folder_scheduler = pipeline._folder_scheduler
        new.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
        return new

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: str | None = None, **kwargs):
        """
        diffusers' `save_pretrained`. With `push_to_hub=True` the saved folder then gets the UnityVideo model card
        (license, base model, modalities, usage; diffusers would write its generic one) and is uploaded, with
        diffusers' options `repo_id` (default: the folder's name), `private`, `token`, `commit_message`, `create_pr`.
        """
        push = kwargs.pop("push_to_hub", False)
        hub = {
            key: kwargs.pop(key)
            for key in ("repo_id", "private", "token", "commit_message", "create_pr")
            if key in kwargs
        }
        super().save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant, **kwargs)
        if push:
            return push_folder(save_directory, hub.pop("repo_id", Path(save_directory).name), **hub)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
    ):
        """Save the pipeline with a UnityVideo model card (license, base model, modalities, usage) and upload it."""

        with tempfile.TemporaryDirectory() as folder:
            return self.save_pretrained(
                folder,
                safe_serialization=safe_serialization,
                variant=variant,
                push_to_hub=True,
                repo_id=repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                create_pr=create_pr,
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if isinstance(pretrained_model_name_or_path, str):
            check_model_source(pretrained_model_name_or_path, "pretrained_model_name_or_path")
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if "scheduler" in kwargs:  # the user's choice, not the folder's
            pipe._folder_scheduler = None
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                own_aligned_memory(component)
        return pipe

    # ------------------------------------------------------------------ sampling defaults (the model folder's)

    def job_defaults(self, job: str) -> dict:
        """The settings a call of `job` uses for those it is not given: height, width, num_frames,
        num_inference_steps, guidance_scale and scheduler, as the model folder records them (`sampling_defaults` in
        its model_index.json), else the released model's."""
        return resolve_sampling_defaults(self.config.sampling_defaults)[resolve_task(job).name]

    def settings_or_defaults(
        self,
        job: str,
        height: int | None,
        width: int | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        window_frames: int | None,
        window_overlap_frames: int | None,
    ) -> tuple[int, int, int, float, int, int]:
        """Each setting left at None takes the folder's default for `job`; windows default to the trained length,
        overlapping by 8 frames (less in shorter windows).
        A size far from the trained one (more than 2x off on a side) gets a warning that names it: a model draws
        tiled patterns far outside the sizes it saw."""
        every_job = resolve_sampling_defaults(self.config.sampling_defaults)
        defaults = every_job[resolve_task(job).name]
        trained_frames, trained_height, trained_width = trained_size(every_job)
        height = defaults["height"] if height is None else height
        width = defaults["width"] if width is None else width
        if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
            ratios = (height / trained_height, width / trained_width)
            if max(ratios) > 2 or min(ratios) < 0.5:
                logger.warning(
                    f"{height} x {width} is far from the {trained_height} x {trained_width} this model was trained at; "
                    f"expect poor videos (leave height and width unset for the model's size)."
                )
        window_frames = trained_frames if window_frames is None else window_frames
        if window_overlap_frames is None and isinstance(window_frames, int):
            window_overlap_frames = max(0, min(DEFAULT_WINDOW_OVERLAP, window_frames - 1))
        return (
            height,
            width,
            defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
            defaults["guidance_scale"] if guidance_scale is None else guidance_scale,
            window_frames,
            window_overlap_frames,
        )

    def job_scheduler(self, job: str):
        """The scheduler a call of `job` steps with: `self.scheduler`, unless the folder's defaults name another one
        for this job and `self.scheduler` is still the folder's own (a scheduler you assign always wins)."""
        name = self.job_defaults(job)["scheduler"]
        if name == "default" or self.scheduler is not self._folder_scheduler:
            return self.scheduler
        return scheduler_by_name(name, self.scheduler)

    # ------------------------------------------------------------------ properties used by the loop and callbacks

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def attention_kwargs(self):
        return self._attention_kwargs

    # ------------------------------------------------------------------ checks

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        height,
        width,
        num_frames,
        num_inference_steps,
        guidance_scale,
        num_videos_per_prompt,
        output_type,
        window_frames,
        window_overlap_frames,
        callback_on_step_end_tensor_inputs,
    ) -> None:
        """Everything that can be checked before any heavy work."""
        check_flow_scheduler(self.scheduler)  # again: its config may have changed since it was set
        p_t, p_h, p_w = self.transformer.config.patch_size
        check_size("height", height, self.vae_scale_factor_spatial, p_h)
        check_size("width", width, self.vae_scale_factor_spatial, p_w)
        temporal = self.vae_scale_factor_temporal * p_t
        for name, value in (("num_frames", num_frames), ("window_frames", window_frames)):
            if not isinstance(value, int) or value < 1 or (value - 1) % temporal:
                raise ValueError(
                    f"`{name}` must be {temporal}k+1 (1, {temporal + 1}, {2 * temporal + 1}, ...), got {value!r}."
                )
        if (
            not isinstance(window_overlap_frames, int)
            or window_overlap_frames % temporal
            or not 0 <= window_overlap_frames <= window_frames - 1
        ):
            raise ValueError(
                f"`window_overlap_frames` must be a multiple of {temporal}, at most `window_frames` - 1 "
                f"({window_frames - 1}), got {window_overlap_frames!r}."
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"`guidance_scale` must be a number (1 = no guidance), got {guidance_scale!r}.")
        if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
            raise ValueError(f"`num_videos_per_prompt` must be a positive integer, got {num_videos_per_prompt!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(
                f"`output_type` must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}."
            )
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` {unknown} not in {self._callback_tensor_inputs}.")

        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Pass `prompt` or `prompt_embeds`.")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not (
                isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            ):
                raise TypeError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}.")
        if isinstance(prompt, list) and isinstance(negative_prompt, list) and len(prompt) != len(negative_prompt):
            raise ValueError(f"{len(prompt)} prompts but {len(negative_prompt)} negative prompts.")
        if prompt_embeds is not None and prompt_embeds.ndim != 3:
            raise ValueError(f"`prompt_embeds` must be (B, L, D), got {tuple(prompt_embeds.shape)}.")
        needs_encoder = (
            prompt is not None
            or (negative_prompt is not None)
            or (guidance_scale > 1 and negative_prompt_embeds is None)
        )
        if needs_encoder and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError(
                "This pipeline has no text encoder: pass `prompt_embeds` (and `negative_prompt_embeds` with "
                "guidance_scale > 1) instead of text."
            )

    def _begin_call(self, guidance_scale: float, attention_kwargs: dict | None) -> None:
        """The state the loop and callbacks read through the properties above."""
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False

    @staticmethod
    def callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs) -> list[str]:
        """diffusers' callback objects name the tensors they need themselves."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            return callback_on_step_end.tensor_inputs
        return callback_on_step_end_tensor_inputs

    @staticmethod
    def _batch_size(prompt, prompt_embeds) -> int:
        if isinstance(prompt, str):
            return 1
        return len(prompt) if prompt is not None else prompt_embeds.shape[0]

    def _modality_names(self, modality, batch_size: int) -> list[str]:
        """One of the transformer's modality names per prompt (a name for all, or a list of one per prompt)."""
        names = [modality] * batch_size if isinstance(modality, str) else list(modality)
        if len(names) != batch_size:
            raise ValueError(f"Got {len(names)} modalities for {batch_size} prompts.")
        return [self.transformer.resolve_modality_name(name) for name in names]

    # ------------------------------------------------------------------ text

    def text_length(self, max_sequence_length: int | None = None) -> int:
        """The tokens every text is padded to: `max_sequence_length`, else the tokenizer's `model_max_length` up to
        Wan's 512. UMT5 tokenizers leave `model_max_length` unset (a huge sentinel), so Wan and the released model
        get 512; a small model trained with short texts (the ShapesWorld demo) records its length in its tokenizer."""
        if max_sequence_length is None:
            limit = getattr(self.tokenizer, "model_max_length", None) or WAN_TEXT_LENGTH
            return min(int(limit), WAN_TEXT_LENGTH)
        if (
            isinstance(max_sequence_length, bool)
            or not isinstance(max_sequence_length, int)
            or max_sequence_length < 1
        ):
            raise ValueError(f"`max_sequence_length` must be a positive integer or None, got {max_sequence_length!r}.")
        return max_sequence_length

    @torch.no_grad()  # as inside a call: with autograd on, attention may take another kernel and differ in last bits
    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        modality: str | list[str] | None = None,
    ):
        r"""
        Encode texts as the pipelines do, so that a pipeline without a text encoder can run on the results.

        Args:
            prompt, negative_prompt, do_classifier_free_guidance, num_videos_per_prompt, prompt_embeds,
            negative_prompt_embeds, device, dtype: as in diffusers' `WanPipeline.encode_prompt`.
            max_sequence_length (`int`, *optional*):
                Tokens each text is padded to; default the pipelines' own (the tokenizer's length, at most 512).
            modality (`str` or `list[str]`, *optional*):
                Also encode this modality's fixed prompt (a name, or one per prompt).

        Returns:
            `(prompt_embeds, negative_prompt_embeds)`, and with `modality` also `modality_prompt_embeds` third, each
            with `num_videos_per_prompt` rows per prompt: pass them (encoded with the default 1) as the pipeline
            arguments of the same names.
        """
        device = device or self._execution_device
        max_sequence_length = self.text_length(max_sequence_length)
        prompt_embeds, negative_prompt_embeds = WanPipeline.encode_prompt(
            self,
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            num_videos_per_prompt=num_videos_per_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=device,
            dtype=dtype,
        )
        if modality is None:
            return prompt_embeds, negative_prompt_embeds
        names = self._modality_names(modality, self._batch_size(prompt, prompt_embeds))
        modality_prompt_embeds = self.encode_modality_prompt(names, max_sequence_length, device, prompt_embeds.dtype)
        return (
            prompt_embeds,
            negative_prompt_embeds,
            modality_prompt_embeds.repeat_interleave(num_videos_per_prompt, 0),
        )

    def encode_modality_prompt(
        self, modalities: list[str], max_sequence_length: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """The fixed prompt of each sample's modality, encoded once per pipeline and reused across steps and calls."""
        embeds = []
        for name in modalities:
            key = (name, max_sequence_length, str(device), dtype, id(self.text_encoder))
            if key not in self._modality_prompt_cache:
                if self.text_encoder is None or self.tokenizer is None:
                    raise ValueError("This pipeline has no text encoder: pass `modality_prompt_embeds`.")
                self._modality_prompt_cache[key] = self._get_t5_prompt_embeds(
                    modality_prompt(name), 1, max_sequence_length, device, dtype
                )
            embeds.append(self._modality_prompt_cache[key])
        return torch.cat(embeds)

    def _encode_texts(
        self,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        modality_prompt_embeds,
        modalities: list[str] | None,
        num_videos_per_prompt: int,
        max_sequence_length: int,
        device: torch.device,
    ):
        """Prompt, negative prompt (only with guidance) and modality prompt embeddings, one row per video."""
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            num_videos_per_prompt=num_videos_per_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=device,
        )
        if prompt is None:  # pre-encoded embeddings are per prompt, like text
            prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
            if negative_prompt_embeds is not None and negative_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        if modalities is not None:
            if modality_prompt_embeds is None:
                modality_prompt_embeds = self.encode_modality_prompt(
                    modalities, max_sequence_length, device, prompt_embeds.dtype
                )
            modality_prompt_embeds = modality_prompt_embeds.to(device).repeat_interleave(num_videos_per_prompt, dim=0)
        dtype = self.transformer.dtype
        embeds = [prompt_embeds, negative_prompt_embeds, modality_prompt_embeds]
        rows = prompt_embeds.shape[0]
        for name, tensor in zip(("negative_prompt_embeds", "modality_prompt_embeds"), embeds[1:]):
            if tensor is not None and tensor.shape[0] != rows:
                raise ValueError(
                    f"`{name}` has {tensor.shape[0] // num_videos_per_prompt} rows for {rows // num_videos_per_prompt} prompts."
                )
        return [None if tensor is None else tensor.to(device=device, dtype=dtype) for tensor in embeds]

    # ------------------------------------------------------------------ latents and videos

    def latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        return (
            batch_size,
            self.transformer.config.in_channels,
            (num_frames - 1) // self.vae_scale_factor_temporal + 1,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )

    def prepare_latents(self, shape, device, generator, latents=None, name="latents") -> torch.Tensor:
        """Gaussian noise of `shape` (float32), or the given `latents` after a shape check."""
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {tuple(latents.shape)}.")
            return latents.to(device=device, dtype=torch.float32)
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"Got {len(generator)} generators for a batch of {shape[0]} videos.")
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def _latents_mean_std(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    # The VAE runs under `torch.inference_mode()`: the same numbers as under `no_grad`, with less bookkeeping per
    # operation, which is a sixth of a small VAE's time (the demo model's decode: 182 -> 150 ms). What leaves it is an
    # ordinary tensor, so that callers may still edit it in place: encoded latents are cloned, and the decoded video's
    # post-processing makes new tensors or arrays anyway.

    def encode_video(self, videos: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> normalised latents (float32), the VAE's mode (deterministic)."""
        videos = videos.to(device=device, dtype=self.vae.dtype)
        with torch.inference_mode(), conv3d_through_onednn(self.vae):
            latents = self.vae.encode(videos).latent_dist.mode()
            mean, std = self._latents_mean_std(latents)
            latents = ((latents - mean) / std).float()
        return latents.clone()

    def decode_latents(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        with torch.inference_mode(), conv3d_through_onednn(self.vae):
            latents = latents.to(self.vae.dtype)
            mean, std = self._latents_mean_std(latents)
            video = self.vae.decode(latents * std + mean, return_dict=False)[0]
        return self.video_processor.postprocess_video(video, output_type=output_type)

    def prepare_condition_videos(
        self,
        videos: VideoInput | list[VideoInput],
        batch_size: int,
        num_frames: int | None,
        height: int,
        width: int,
        still_frames: int = 1,
    ) -> tuple[torch.Tensor, int]:
        """
        Conditioning video(s) -> a (batch_size, 3, F, H, W) tensor in [-1, 1] and the frame count used. One video is
        used for every prompt; several must match the prompts one to one. `num_frames=None` takes as many frames as
        the shortest video allows (4k+1). A still (an image, or a video of one frame) is held for `num_frames`
        frames, or `still_frames` when that is None.
        """
        video_list = as_video_list(videos)
        if len(video_list) not in (1, batch_size):
            raise ValueError(f"Got {len(video_list)} videos for {batch_size} prompts; give one, or one per prompt.")
        frames = [load_frames(video) for video in video_list]
        temporal = self.vae_scale_factor_temporal
        if num_frames is None:
            lengths = [len(f) for f in frames if len(f) > 1]
            num_frames = (min(lengths) - 1) // temporal * temporal + 1 if lengths else still_frames
        frames = [f * num_frames if len(f) == 1 else f for f in frames]
        short = [len(f) for f in frames if len(f) < num_frames]
        if short:
            raise ValueError(f"A conditioning video has {short[0]} frames; {num_frames} were requested.")
        prepared = [prepare_video(f, num_frames, height, width) for f in frames]
        tensor = self.video_processor.preprocess_video(prepared, height=height, width=width)
        if tensor.shape[0] == 1 and batch_size > 1:
            tensor = tensor.expand(batch_size, -1, -1, -1, -1)
        return tensor, num_frames

    def prepare_first_frames(self, image, batch_size: int, height: int, width: int) -> torch.Tensor:
        """A first frame to keep (one image for every prompt, or a list of one per prompt) -> (B, 3, 1, H, W)."""
        images = image if isinstance(image, list) else [image]
        return self.prepare_condition_videos([[frame] for frame in images], batch_size, 1, height, width)[0]

    @staticmethod
    def prompts_for_videos(prompt, prompt_embeds, videos: VideoInput | list[VideoInput], empty_caption: bool):
        """One prompt for each of several conditioning videos: a single prompt is repeated for each; with no prompt
        at all and `empty_caption`, each video gets an empty caption."""
        count = len(as_video_list(videos))
        if prompt is None and prompt_embeds is None and empty_caption:
            return [""] * count
        if isinstance(prompt, str) and count > 1:
            return [prompt] * count
        return prompt

    # ------------------------------------------------------------------ the denoising loop

    def _model_timestep(self, t: torch.Tensor, latents: torch.Tensor, two_streams: bool, holds: dict[str, Hold]):
        """One timestep per sample; with held latent frames, per token: `t` scaled by each frame's keep weight (0 on
        fully held frames, as Wan2.2 TI2V does for its clean first frame)."""
        if not holds:
            return t.expand(latents.shape[0])
        p_t, p_h, p_w = self.transformer.config.patch_size
        frames, height, width = latents.shape[2] // p_t, latents.shape[3] // p_h, latents.shape[4] // p_w

        def per_token(stream: str) -> torch.Tensor:
            keep = (
                holds[stream].keep.flatten()[::p_t] if stream in holds else torch.ones(frames, device=latents.device)
            )
            return (keep[:, None] * t).expand(frames, height * width).flatten()

        timestep = torch.cat([per_token("rgb"), per_token("modality")]) if two_streams else per_token("rgb")
        return timestep.unsqueeze(0).expand(latents.shape[0], -1)

    def _velocities(
        self,
        latents,
        modality_latents,
        timestep,
        prompt_embeds,
        negative_prompt_embeds,
        modality_prompt_embeds,
        modality,
        task,
        step,
        attention_kwargs,
    ):
        """Both streams' velocities, with classifier-free guidance on the RGB prompt."""
        dtype = self._transformer_dtype

        def predict(branch, latents, modality_latents, timestep, text, modality_text, modality):
            with self.transformer.cache_context(branch):
                return self.transformer(
                    hidden_states=latents.to(dtype),
                    timestep=timestep,
                    encoder_hidden_states=text,
                    modality_hidden_states=None if modality_latents is None else modality_latents.to(dtype),
                    modality_encoder_hidden_states=modality_text,
                    modality=modality,
                    task=task,
                    attention_kwargs=attention_kwargs,
                    return_dict=False,
                )

        if not self.do_classifier_free_guidance:
            return predict(
                "cond", latents, modality_latents, timestep, prompt_embeds, modality_prompt_embeds, modality
            )
        if self.batch_guidance:
            doubled = predict(
                "cond_uncond",
                *(None if x is None else torch.cat([x, x]) for x in (latents, modality_latents, timestep)),
                self._guidance_batch(prompt_embeds, negative_prompt_embeds),
                self._guidance_batch(modality_prompt_embeds, modality_prompt_embeds),
                None if modality is None else modality * 2,
            )
            conditional, unconditional = zip(*(((None, None) if x is None else x.chunk(2)) for x in doubled))
        else:
            conditional = predict(
                "cond", latents, modality_latents, timestep, prompt_embeds, modality_prompt_embeds, modality
            )
            unconditional = predict(
                "uncond", latents, modality_latents, timestep, negative_prompt_embeds, modality_prompt_embeds, modality
            )
        scale = self.guidance_scale
        return tuple(None if c is None else u + scale * (c - u) for c, u in zip(conditional, unconditional))

    def _guidance_batch(self, conditional: torch.Tensor | None, unconditional: torch.Tensor | None):
        """`cat([conditional, unconditional])`, made once per pair of tensors within a denoising loop, so the text
        projection cache recognises it at every step (a callback that replaces a text makes a new one)."""
        if conditional is None:
            return None
        if conditional.is_inference() or unconditional.is_inference():  # no modification counter to check
            return torch.cat([conditional, unconditional])
        memo = self._step_memo
        key = (id(conditional), conditional._version, id(unconditional), unconditional._version)
        if key not in memo:
            memo[key] = (conditional, unconditional, torch.cat([conditional, unconditional]))  # inputs held: ids stay
        return memo[key][-1]

    @contextmanager
    def _reuse_across_steps(self) -> Iterator[None]:
        """What one denoising loop computes once and reuses at every step (see `reuse_text_projections`). The
        transformer's dtype too: diffusers finds it by walking every module, which costs a small model a few % of a
        step."""
        self._step_memo = {}
        self._transformer_dtype = self.transformer.dtype
        reuse = self.transformer.cache_text_projections() if self.reuse_text_projections else nullcontext()
        try:
            with reuse:
                yield
        finally:
            self._step_memo = {}

    def denoise(
        self,
        *,
        latents: torch.Tensor,
        modality_latents: torch.Tensor | None,
        task: Task,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        modality_prompt_embeds: torch.Tensor | None,
        modality: list[str] | None,
        scheduler,
        holds: dict[str, Hold] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = (),
        attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        The one loop of all jobs. `task` says which streams are noisy; clean streams are fed as they are. Each noisy
        stream is stepped by its own copy of `scheduler`, whose timesteps are set. `holds`
        ("rgb" / "modality") pins latent frames of a noisy stream to given values after every step (a first frame,
        or the overlap with the previous window).
        """
        holds = holds or {}
        two_streams = modality_latents is not None
        noisy = {"rgb": task.rgb_noisy, "modality": task.modality_noisy and two_streams}
        scheduler.set_begin_index(0)
        schedulers = {stream: copy.deepcopy(scheduler) for stream, is_noisy in noisy.items() if is_noisy}
        self._num_timesteps = len(timesteps)
        latents = holds["rgb"].apply(latents) if "rgb" in holds else latents
        modality_latents = holds["modality"].apply(modality_latents) if "modality" in holds else modality_latents

        with self._reuse_across_steps(), self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                timestep = self._model_timestep(t, latents, two_streams, holds)
                velocity, modality_velocity = self._velocities(
                    latents,
                    modality_latents,
                    timestep,
                    prompt_embeds,
                    negative_prompt_embeds,
                    modality_prompt_embeds,
                    modality,
                    task.name,
                    i,
                    attention_kwargs,
                )
                if "rgb" in schedulers:
                    latents = schedulers["rgb"].step(velocity, t, latents, return_dict=False)[0]
                    latents = holds["rgb"].apply(latents) if "rgb" in holds else latents
                if "modality" in schedulers:
                    modality_latents = schedulers["modality"].step(
                        modality_velocity, t, modality_latents, return_dict=False
                    )[0]
                    modality_latents = (
                        holds["modality"].apply(modality_latents) if "modality" in holds else modality_latents
                    )

                if callback_on_step_end is not None:
                    tensors = dict(
                        latents=latents,
                        modality_latents=modality_latents,
                        prompt_embeds=prompt_embeds,
                        negative_prompt_embeds=negative_prompt_embeds,
                    )
                    outputs = callback_on_step_end(
                        self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = outputs.pop("latents", latents)
                    modality_latents = outputs.pop("modality_latents", modality_latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()
        self._current_timestep = None
        return latents, modality_latents

    def _denoise_in_windows(
        self,
        latents: torch.Tensor,
        modality_latents: torch.Tensor | None,
        task: Task,
        image_latents: torch.Tensor | None,
        window_frames: int,
        overlap_frames: int,
        **denoise_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Denoise the whole length in windows of `window_frames` video frames. Each window after the first is
        conditioned on the previous one's result: its first overlapping latent frames are held to it with a weight
        that falls from 1 to 0 across the overlap (the first are clean conditioning, the rest blend into the new
        window's own estimate, so there is no seam). A single window is the plain call.
        """
        streams = {"rgb": latents, "modality": modality_latents}
        noisy = [
            name
            for name, is_noisy in (("rgb", task.rgb_noisy), ("modality", task.modality_noisy))
            if is_noisy and streams[name] is not None
        ]
        # what held frames are pinned to: generated values once a window has run, the image for frame 0
        targets = {name: streams[name].clone() for name in noisy}
        if image_latents is not None:
            targets["rgb"][:, :, :1] = image_latents
        temporal = self.vae_scale_factor_temporal
        plan = window_plan(latents.shape[2], (window_frames - 1) // temporal + 1, overlap_frames // temporal)

        generated_until = 0
        for start, end in plan:
            keep = torch.ones(1, 1, end - start, 1, 1, device=latents.device)
            held = max(0, generated_until - start)
            keep[:, :, :held] = torch.arange(held, device=latents.device).view(1, 1, -1, 1, 1) / max(held, 1)
            holds = {}
            for name in noisy:
                stream_keep = keep.clone()
                if name == "rgb" and image_latents is not None and start == 0:
                    stream_keep[:, :, 0] = 0
                if stream_keep.min() < 1:
                    holds[name] = Hold(target=targets[name][:, :, start:end], keep=stream_keep)
            window = {name: None if tensor is None else tensor[:, :, start:end] for name, tensor in streams.items()}
            rgb, modality = self.denoise(
                latents=window["rgb"], modality_latents=window["modality"], task=task, holds=holds, **denoise_kwargs
            )
            for name, result in (("rgb", rgb), ("modality", modality)):
                if name in noisy:
                    streams[name] = torch.cat([streams[name][:, :, :start], result, streams[name][:, :, end:]], dim=2)
                    targets[name][:, :, start:end] = result
            generated_until = end
        return streams["rgb"], streams["modality"]
