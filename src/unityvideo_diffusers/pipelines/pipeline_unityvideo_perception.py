"""RGB video -> modality video: estimation (depth, optical flow, segmentation, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..tasks import resolve_task
from ..video_io import VideoInput
from .pipeline_unityvideo_base import UnityVideoBasePipeline, call_arguments


class UnityVideoPerceptionPipeline(UnityVideoBasePipeline):
    r"""
    An RGB video -> its modality video (a visualisation, e.g. colour-mapped depth).

    ```py
    >>> pipe = UnityVideoPerceptionPipeline.from_pretrained("path/to/unityvideo-5b", dtype=torch.bfloat16)
    >>> depth = pipe(video="street.mp4", modality="depth").modality_frames[0]
    ```
    """

    @torch.no_grad()
    def __call__(
        self,
        video: VideoInput | list[VideoInput] = None,
        modality: str | list[str] = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 256,
        width: int = 256,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        modality_latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        modality_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["modality_latents"],
        max_sequence_length: int | None = None,
        window_frames: int | None = None,
        window_overlap_frames: int = 8,
    ):
        r"""
        Args:
            video: the RGB video (same forms as [`UnityVideoControlPipeline`]'s `control_video`), or a list of one per
                prompt.
            modality: what to estimate (name, or one per video).
            prompt: an optional caption of the video (the reference uses an empty one, the default); with several
                videos and no prompt, each gets an empty caption.
            guidance_scale: 1 (no guidance) by default, as the reference.
            Other arguments as in [`UnityVideoPipeline`]. The output's `frames` is `None`.
        """
        if video is None:
            raise ValueError("Pass `video`: the RGB video to estimate the modality of.")
        if modality is None:
            raise ValueError("Pass `modality`: what to estimate (e.g. 'depth').")
        if prompt is None and prompt_embeds is None:
            prompt = [""] * (len(modality) if isinstance(modality, list) else 1)
        arguments = call_arguments(locals(), renamed=("video",))
        return self._run(resolve_task("perception"), condition_video=video, image=None, latents=None, **arguments)
