"""Text -> video, optionally with a jointly generated modality video."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch
from diffusers.utils import replace_example_docstring

from ..tasks import resolve_task
from .pipeline_output import UnityVideoPipelineOutput
from .pipeline_unityvideo_base import UnityVideoBasePipeline


JOINT = resolve_task("joint")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from unityvideo_diffusers import UnityVideoPipeline

        >>> pipe = UnityVideoPipeline.from_pretrained("path/to/unityvideo-5b", torch_dtype=torch.bfloat16).to("cuda")
        >>> out = pipe("a red ball bouncing on a wooden floor", modality="depth")
        >>> out.frames[0], out.modality_frames[0]  # (F, H, W, 3) arrays in [0, 1]
        ```
"""


class UnityVideoPipeline(UnityVideoBasePipeline):
    r"""
    Text -> RGB video, with `modality="depth"` (or any of the transformer's modalities) also the matching modality
    video, generated jointly; `modality=None` is plain text-to-video. `image=` keeps a first frame, as Wan2.2-TI2V does.
    """

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        modality: str | list[str] | None = None,
        image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
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
        window_overlap_frames: int | None = None,
    ):
        r"""
        Generate videos from text, and with `modality` the matching modality videos.

        Settings left at `None` (size, length, steps, guidance) take the model folder's defaults for this job
        (`pipe.job_defaults("joint")`): the size and length the model was trained at, and the steps and guidance
        measured for it.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                What to generate; or pass `prompt_embeds` (then the pipeline needs no text encoder).
            negative_prompt (`str` or `list[str]`, *optional*):
                Used with guidance (`guidance_scale > 1`); default empty.
            modality (`str` or `list[str]`, *optional*):
                A modality to generate with the video (a name, or one per prompt), or `None` for the video alone.
            image (`PIL.Image.Image` or `list[PIL.Image.Image]`, *optional*):
                A first frame to keep (one, or one per prompt).
            height (`int`, *optional*), width (`int`, *optional*):
                Multiples of the VAE's scale times the patch size (32 for the released model); default the model's.
            num_frames (`int`, *optional*):
                4k+1; default the length the model was trained on (33 for the released model).
            num_inference_steps (`int`, *optional*), guidance_scale (`float`, *optional*):
                Sampling steps, and classifier-free guidance on the RGB prompt (off at 1); default the model's.
            num_videos_per_prompt (`int`, defaults to 1), generator (`torch.Generator`, *optional*):
                As in diffusers.
            latents (`torch.Tensor`, *optional*), modality_latents (`torch.Tensor`, *optional*):
                Starting noise of each stream, float32 of shape (B, C, F', H', W').
            prompt_embeds (`torch.Tensor`, *optional*), negative_prompt_embeds (`torch.Tensor`, *optional*),
            modality_prompt_embeds (`torch.Tensor`, *optional*):
                Pre-encoded texts (B, L, D), one row per prompt, as `encode_prompt` returns them; the modality prompt
                defaults to the modality's fixed prompt, encoded once and cached.
            output_type (`str`, defaults to `"np"`):
                `"np"`, `"pil"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`):
                A [`UnityVideoPipelineOutput`], or the tuple `(frames, modality_frames)`.
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer (e.g. `{"scale": 0.8}` for LoRA).
            callback_on_step_end (`Callable`, *optional*), callback_on_step_end_tensor_inputs (`list[str]`):
                Called after each step with the named tensors (`latents`, `modality_latents`, `prompt_embeds`,
                `negative_prompt_embeds`); the ones it returns replace them.
            max_sequence_length (`int`, *optional*):
                Tokens each text is padded to; default the tokenizer's `model_max_length`, at most 512 (Wan's and the
                released model's). A model must be sampled with its training length.
            window_frames (`int`, *optional*), window_overlap_frames (`int`, *optional*):
                A video longer than `window_frames` (4k+1; default the trained length) is made in windows, each
                conditioned on the last `window_overlap_frames` (a multiple of 4; default 8, fewer in shorter windows)
                of the previous one.

        Examples:

        Returns:
            [`UnityVideoPipelineOutput`] or `tuple`: the videos and, with a modality, the modality videos.
        """
        # 1. Settings not given take the model folder's defaults; check every input before any heavy work
        (
            height,
            width,
            num_inference_steps,
            guidance_scale,
            window_frames,
            window_overlap_frames,
        ) = self.settings_or_defaults(
            JOINT.name, height, width, num_inference_steps, guidance_scale, window_frames, window_overlap_frames
        )
        num_frames = self.job_defaults(JOINT.name)["num_frames"] if num_frames is None else num_frames
        callback_on_step_end_tensor_inputs = self.callback_tensor_names(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self.check_inputs(
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
        )
        self._begin_call(guidance_scale, attention_kwargs)
        device = self._execution_device
        batch_size = self._batch_size(prompt, prompt_embeds)
        modalities = None if modality is None else self._modality_names(modality, batch_size)
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
        if modalities is not None:
            modalities = [name for name in modalities for _ in range(num_videos_per_prompt)]

        # 3. Timesteps
        scheduler = self.job_scheduler(JOINT.name)
        scheduler.set_timesteps(num_inference_steps, device=device)

        # 4. Noise for the video and (with a modality) the modality video; the kept first frame's latents
        shape = self.latent_shape(videos, num_frames, height, width)
        latents = self.prepare_latents(shape, device, generator, latents)
        if modalities is None:
            modality_latents = None
        else:
            modality_latents = self.prepare_latents(shape, device, generator, modality_latents, "modality_latents")
        image_latents = None
        if first_frames is not None:
            image_latents = self.encode_video(first_frames, device).repeat_interleave(num_videos_per_prompt, dim=0)

        # 5. Denoise both streams, in windows when the video is longer than one
        latents, modality_latents = self._denoise_in_windows(
            latents=latents,
            modality_latents=modality_latents,
            task=JOINT,
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

        # 6. Decode, both streams in one VAE batch: at small sizes the VAE's time is per call more than per video
        # (`vae.enable_slicing()` decodes one video at a time where memory is short)
        if modality_latents is None:
            frames, modality_frames = self.decode_latents(latents, output_type), None
        else:
            both = self.decode_latents(torch.cat([latents, modality_latents]), output_type)
            frames, modality_frames = both[: len(latents)], both[len(latents) :]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames, modality_frames)
        return UnityVideoPipelineOutput(frames=frames, modality_frames=modality_frames)
