"""RGB video -> modality video: estimation (depth, optical flow, segmentation, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.utils import replace_example_docstring

from ..tasks import resolve_task
from ..video_io import VideoInput
from .pipeline_output import UnityVideoPipelineOutput
from .pipeline_unityvideo_base import UnityVideoBasePipeline


PERCEPTION = resolve_task("perception")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from unityvideo_diffusers import UnityVideoPerceptionPipeline

        >>> pipe = UnityVideoPerceptionPipeline.from_pretrained("path/to/unityvideo-5b", torch_dtype=torch.bfloat16)
        >>> depth = pipe(video="street.mp4", modality="depth").modality_frames[0]
        >>> depths = pipe(video=["a.mp4", "b.mp4"], modality="depth").modality_frames  # a batch, empty captions
        ```
"""


class UnityVideoPerceptionPipeline(UnityVideoBasePipeline):
    r"""
    An RGB video -> its modality video (a visualisation, e.g. colour-mapped depth).
    """

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        video: VideoInput | list[VideoInput] = None,
        modality: str | list[str] = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
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
        window_overlap_frames: int | None = None,
    ):
        r"""
        Estimate a modality of videos.

        Args:
            video (`str`, `list[PIL.Image.Image]`, `np.ndarray`, `torch.Tensor` or a list of them):
                The RGB video(s), in the forms [`UnityVideoControlPipeline`]'s `control_video` takes: one, a list,
                or a stacked (B, F, H, W, 3) array or (B, F, 3, H, W) tensor. A still is a video of one frame.
            modality (`str` or `list[str]`):
                What to estimate (a name, or one per video).
            prompt (`str` or `list[str]`, *optional*):
                Captions of the videos (one for all, or one per video); without one each video gets an empty caption,
                as the authors' script does.
            guidance_scale (`float`, *optional*):
                Default the model folder's for this job: 1 (no guidance) for the released model, as the authors'.
            Other arguments as in [`UnityVideoPipeline`]; settings left at `None` take the model folder's defaults
            for this job (`pipe.job_defaults("perception")`).

        Examples:

        Returns:
            [`UnityVideoPipelineOutput`] (its `frames` is `None`) or the tuple `(modality_frames,)`.
        """
        # 1. Settings not given take the model folder's defaults; check every input before any heavy work
        if video is None:
            raise ValueError("Pass `video`: the RGB video to estimate the modality of.")
        if modality is None:
            raise ValueError("Pass `modality`: what to estimate (e.g. 'depth').")
        (
            height,
            width,
            num_inference_steps,
            guidance_scale,
            window_frames,
            window_overlap_frames,
        ) = self.settings_or_defaults(
            PERCEPTION.name, height, width, num_inference_steps, guidance_scale, window_frames, window_overlap_frames
        )
        callback_on_step_end_tensor_inputs = self.callback_tensor_names(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        prompt = self.prompts_for_videos(prompt, prompt_embeds, video, empty_caption=True)
        check = dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_videos_per_prompt=num_videos_per_prompt,
            output_type=output_type,
            window_frames=window_frames,
            window_overlap_frames=window_overlap_frames,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        self.check_inputs(num_frames=1 if num_frames is None else num_frames, **check)
        self._begin_call(guidance_scale, attention_kwargs)
        device = self._execution_device
        batch_size = self._batch_size(prompt, prompt_embeds)
        modalities = self._modality_names(modality, batch_size)
        rgb, num_frames = self.prepare_condition_videos(video, batch_size, num_frames, height, width)
        self.check_inputs(num_frames=num_frames, **check)

        # 2. Encode the caption, the negative prompt (with guidance) and the modality's fixed prompt
        prompt_embeds, negative_prompt_embeds, modality_prompt_embeds = self._encode_texts(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            modality_prompt_embeds,
            modalities,
            num_videos_per_prompt,
            self.text_length(max_sequence_length),
            device,
        )
        videos = batch_size * num_videos_per_prompt
        modalities = [name for name in modalities for _ in range(num_videos_per_prompt)]

        # 3. Timesteps
        scheduler = self.job_scheduler(PERCEPTION.name)
        scheduler.set_timesteps(num_inference_steps, device=device)

        # 4. The video's latents (the clean RGB stream) and noise for the modality stream
        rgb_latents = self.encode_video(rgb, device).repeat_interleave(num_videos_per_prompt, dim=0)
        shape = self.latent_shape(videos, num_frames, height, width)
        modality_latents = self.prepare_latents(shape, device, generator, modality_latents, "modality_latents")

        # 5. Denoise the modality stream beside the clean video, in windows when the video is longer than one
        _, modality_latents = self._denoise_in_windows(
            latents=rgb_latents,
            modality_latents=modality_latents,
            task=PERCEPTION,
            image_latents=None,
            window_frames=window_frames,
            overlap_frames=window_overlap_frames,
            scheduler=scheduler,
            timesteps=scheduler.timesteps,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            modality_prompt_embeds=modality_prompt_embeds,
            modality=modalities,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            attention_kwargs=attention_kwargs,
        )

        # 6. Decode
        modality_frames = self.decode_latents(modality_latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (modality_frames,)
        return UnityVideoPipelineOutput(frames=None, modality_frames=modality_frames)
