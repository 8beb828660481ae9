"""Modality video (+ text) -> RGB video: controllable generation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch

from ..tasks import resolve_task
from ..video_io import VideoInput
from .pipeline_unityvideo_base import UnityVideoBasePipeline, call_arguments


class UnityVideoControlPipeline(UnityVideoBasePipeline):
    r"""
    A modality video (e.g. a depth visualisation) and a prompt -> an RGB video that follows it.

    ```py
    >>> pipe = UnityVideoControlPipeline.from_pretrained("path/to/unityvideo-5b", dtype=torch.bfloat16)
    >>> video = pipe("a knight walking in the snow", control_video="depth.mp4", modality="depth").frames[0]
    ```
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        control_video: VideoInput | list[VideoInput] = None,
        modality: str | list[str] = None,
        negative_prompt: str | list[str] | None = None,
        image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        height: int = 256,
        width: int = 256,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
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
            control_video: the modality video: a file path, a list of PIL images, a (F, H, W, 3) array or a
                (F, 3, H, W) tensor (one for every prompt, or a list of one per prompt). `num_frames` frames are sampled
                evenly from it and each is scaled to cover `height` x `width` and centre-cropped, as the reference does.
            modality: what `control_video` shows (name, or one per prompt).
            num_frames: 4k+1, at most the control video's length; `None` takes as many as it has (rounded to 4k+1).
            Other arguments as in [`UnityVideoPipeline`]. The output's `modality_frames` is `None`.
        """
        if control_video is None:
            raise ValueError("Pass `control_video`: the modality video the generated video should follow.")
        if modality is None:
            raise ValueError("Pass `modality`: what `control_video` shows (e.g. 'depth').")
        arguments = call_arguments(locals(), renamed=("control_video",))
        return self._run(resolve_task("control"), condition_video=control_video, modality_latents=None, **arguments)
