"""Text -> video, optionally with a jointly generated modality video."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch

from ..tasks import resolve_task
from .pipeline_unityvideo_base import UnityVideoBasePipeline, call_arguments


class UnityVideoPipeline(UnityVideoBasePipeline):
    r"""
    Text -> RGB video, with `modality="depth"` (or any of the transformer's modalities) also the matching modality
    video, generated jointly; `modality=None` is plain text-to-video. `image=` keeps a first frame, as Wan2.2-TI2V does.

    ```py
    >>> pipe = UnityVideoPipeline.from_pretrained("path/to/unityvideo-5b", dtype=torch.bfloat16).to("cuda")
    >>> out = pipe("a red ball bouncing on a wooden floor", modality="depth", num_frames=33, height=256, width=256)
    >>> out.frames[0], out.modality_frames[0]  # (F, H, W, 3) arrays in [0, 1]
    ```
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        modality: str | list[str] | None = None,
        image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        height: int = 256,
        width: int = 256,
        num_frames: int = 33,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        modality_latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        modality_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int | None = None,
        window_frames: int | None = None,
        window_overlap_frames: int = 8,
    ):
        r"""
        Args:
            prompt: what to generate; or pass `prompt_embeds` (then the pipeline needs no text encoder).
            negative_prompt: used with guidance (`guidance_scale > 1`); default empty.
            modality: a modality to generate with the video (name, or one per prompt), or `None`.
            image: a first frame to keep (one, or one per prompt).
            height, width: multiples of 32 (VAE 16x, patch 2); the released model was trained at 256 x 256.
            num_frames: 4k+1; the released model was trained on 33.
            num_inference_steps, guidance_scale: sampling steps; classifier-free guidance on the RGB prompt (off at 1).
            num_videos_per_prompt, generator, latents, modality_latents: as in diffusers; latents are float32 noise
                of shape (B, C, F', H', W').
            prompt_embeds, negative_prompt_embeds, modality_prompt_embeds: pre-encoded texts (B, L, D); the modality
                prompt defaults to the modality's fixed prompt, encoded once and cached.
            output_type: "np", "pil", "pt" or "latent".
            return_dict: a [`UnityVideoPipelineOutput`], or the tuple `(frames, modality_frames)`.
            attention_kwargs: passed to the transformer (e.g. `{"scale": 0.8}` for LoRA).
            callback_on_step_end, callback_on_step_end_tensor_inputs: called after each step with the named tensors
                (`latents`, `modality_latents`, `prompt_embeds`, `negative_prompt_embeds`); returned ones replace them.
            max_sequence_length: tokens each text is padded to; default the tokenizer's `model_max_length`, at
                most 512 (Wan's and the released model's length). A model must be sampled with its training length.
            window_frames, window_overlap_frames: a video longer than `window_frames` (4k+1; default the 33 frames the
                released model was trained on) is made in windows, each conditioned on the last
                `window_overlap_frames` (a multiple of 4) of the previous one.
        """
        return self._run(resolve_task("joint"), condition_video=None, **call_arguments(locals()))
