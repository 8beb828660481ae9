"""Modality video (+ text) -> RGB video: controllable generation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch
from diffusers.utils import replace_example_docstring

from ..tasks import resolve_task
from ..video_io import VideoInput
from .pipeline_output import UnityVideoPipelineOutput
from .pipeline_unityvideo_base import UnityVideoBasePipeline


CONTROL = resolve_task("control")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from unityvideo_diffusers import UnityVideoControlPipeline

        >>> pipe = UnityVideoControlPipeline.from_pretrained("path/to/unityvideo-5b", torch_dtype=torch.bfloat16)
        >>> video = pipe("a knight walking in the snow", control_video="depth.mp4", modality="depth").frames[0]
        ```
"""


class UnityVideoControlPipeline(UnityVideoBasePipeline):
    r"""
    A modality video (e.g. a depth visualisation) and a prompt -> an RGB video that follows it.
    """

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        control_video: VideoInput | list[VideoInput] = None,
        modality: str | list[str] = None,
        negative_prompt: str | list[str] | None = None,
        image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
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
        window_overlap_frames: int | None = None,
    ):
        r"""
        Generate videos that follow a modality video.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                What to generate; one prompt serves every control video.
            control_video (`str`, `list[PIL.Image.Image]`, `np.ndarray`, `torch.Tensor` or a list of them):
                The modality video: a file path, a list of PIL images, a (F, H, W, 3) array or a (F, 3, H, W) tensor
                (one for every prompt, or one per prompt; a (B, F, H, W, 3) array is B videos). A still (a PIL
                image, an image file, an H x W x 3 array) is held for `num_frames` frames. `num_frames` frames are
                sampled evenly from a video and each is scaled to cover `height` x `width` and centre-cropped, as the
                authors' script does.
            modality (`str` or `list[str]`):
                What `control_video` shows (a name, or one per prompt).
            num_frames (`int`, *optional*):
                4k+1, at most the control video's length; `None` takes as many as it has (rounded down to 4k+1), and
                for a still the model's trained length.
            Other arguments as in [`UnityVideoPipeline`]; settings left at `None` take the model folder's defaults
            for this job (`pipe.job_defaults("control")`).

        Examples:

        Returns:
            [`UnityVideoPipelineOutput`] (its `modality_frames` is `None`) or the tuple `(frames,)`.
        """
        # 1. Settings not given take the model folder's defaults; check every input before any heavy work
        if control_video is None:
            raise ValueError("Pass `control_video`: the modality video the generated video should follow.")
        if modality is None:
            raise ValueError("Pass `modality`: what `control_video` shows (e.g. 'depth').")
        (
            height,
            width,
            num_inference_steps,
            guidance_scale,
            window_frames,
            window_overlap_frames,
        ) = self.settings_or_defaults(
            CONTROL.name, height, width, num_inference_steps, guidance_scale, window_frames, window_overlap_frames
        )
        callback_on_step_end_tensor_inputs = self.callback_tensor_names(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        prompt = self.prompts_for_videos(prompt, prompt_embeds, control_video, empty_caption=False)
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
        control, num_frames = self.prepare_condition_videos(
            control_video,
            batch_size,
            num_frames,
            height,
            width,
            still_frames=self.job_defaults(CONTROL.name)["num_frames"],
        )
        self.check_inputs(num_frames=num_frames, **check)
        first_frames = None if image is None else self.prepare_first_frames(image, batch_size, height, width)

        # 2. Encode the prompt, the negative prompt (with guidance) and the modality's fixed prompt
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
        scheduler = self.job_scheduler(CONTROL.name)
        scheduler.set_timesteps(num_inference_steps, device=device)

        # 4. The control video's latents (the clean modality stream), noise for the video, the first frame's latents
        control_latents = self.encode_video(control, device).repeat_interleave(num_videos_per_prompt, dim=0)
        latents = self.prepare_latents(
            self.latent_shape(videos, num_frames, height, width), device, generator, latents
        )
        image_latents = None
        if first_frames is not None:
            image_latents = self.encode_video(first_frames, device).repeat_interleave(num_videos_per_prompt, dim=0)

        # 5. Denoise the video stream beside the clean control, in windows when the video is longer than one
        latents, _ = self._denoise_in_windows(
            latents=latents,
            modality_latents=control_latents,
            task=CONTROL,
            image_latents=image_latents,
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
        frames = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return UnityVideoPipelineOutput(frames=frames, modality_frames=None)
