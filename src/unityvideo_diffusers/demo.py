"""A web demo of the three jobs side by side (Gradio): `unityvideo demo --model DIR`."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import torch

from .jobs import load_pipeline
from .pipelines import UnityVideoControlPipeline, UnityVideoPerceptionPipeline, UnityVideoPipeline
from .video_io import save_video


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine


def build_demo(
    model: str, device: str = "cpu", dtype: str = "fp32", quantize: str | None = None, offload: str | None = None
):
    import gradio as gr

    pipe = load_pipeline(UnityVideoPipeline, model, device, dtype, offload, False, None, quantize)
    pipe.set_progress_bar_config(disable=True)
    control = UnityVideoControlPipeline.from_pipe(pipe)
    perception = UnityVideoPerceptionPipeline.from_pipe(pipe)
    modalities = list(pipe.transformer.config.modalities)
    folder = Path(tempfile.mkdtemp(prefix="unityvideo-demo-"))
    defaults = pipe.job_defaults("joint")  # the folder's; estimation keeps its own guidance

    def written(frames, name: str) -> str:
        return str(save_video(frames, folder / f"{name}-{uuid.uuid4().hex[:8]}.mp4"))

    def settings(steps, guidance, seed, frames, size):
        return dict(
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            height=int(size),
            width=int(size),
            generator=torch.Generator().manual_seed(int(seed)),
        )

    def text_to_video(prompt, modality, steps, guidance, seed, frames, size):
        if not prompt:
            raise gr.Error("Write a prompt.")
        out = pipe(prompt, modality=modality, num_frames=int(frames), **settings(steps, guidance, seed, frames, size))
        return written(out.frames[0], "rgb"), written(out.modality_frames[0], modality)

    def control_to_video(prompt, control_video, modality, *common):
        if not prompt or not control_video:
            raise gr.Error("Give a prompt and a control video.")
        out = control(prompt, control_video=control_video, modality=modality, **settings(*common))
        return written(out.frames[0], "controlled")

    def video_to_modality(video, modality, *common):
        if not video:
            raise gr.Error("Give a video.")
        out = perception(video=video, modality=modality, **{**settings(*common), "guidance_scale": None})
        return written(out.modality_frames[0], modality)

    with gr.Blocks(title="UnityVideo") as demo:
        gr.Markdown("# UnityVideo\nOne model: text → video + modality, modality → video, video → modality.")
        with gr.Row():
            steps = gr.Slider(1, 100, value=defaults["num_inference_steps"], step=1, label="steps")
            guidance = gr.Slider(
                1, 10, value=defaults["guidance_scale"], step=0.5, label="guidance (not for estimation)"
            )
            seed = gr.Number(value=0, precision=0, label="seed")
            frames = gr.Slider(1, 81, value=defaults["num_frames"], step=4, label="frames (4k+1)")
            size = gr.Slider(64, 512, value=defaults["height"], step=32, label="height = width")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Text → video + modality")
                prompt = gr.Textbox(label="prompt", elem_id="t2v-prompt")
                t2v_modality = gr.Dropdown(modalities, value=modalities[0], label="modality")
                t2v_button = gr.Button("Generate", elem_id="t2v-generate")
                t2v_rgb = gr.Video(label="video", elem_id="t2v-video")
                t2v_mod = gr.Video(label="modality", elem_id="t2v-modality")
            with gr.Column():
                gr.Markdown("### Modality → video")
                control_prompt = gr.Textbox(label="prompt")
                control_video = gr.Video(label="control video")
                control_modality = gr.Dropdown(modalities, value=modalities[0], label="modality")
                control_button = gr.Button("Follow")
                control_out = gr.Video(label="video")
            with gr.Column():
                gr.Markdown("### Video → modality")
                source = gr.Video(label="video")
                estimate_modality = gr.Dropdown(modalities, value=modalities[0], label="modality")
                estimate_button = gr.Button("Estimate")
                estimate_out = gr.Video(label="modality")
        common = [steps, guidance, seed, frames, size]
        t2v_button.click(text_to_video, [prompt, t2v_modality, *common], [t2v_rgb, t2v_mod])
        control_button.click(control_to_video, [control_prompt, control_video, control_modality, *common], control_out)
        estimate_button.click(video_to_modality, [source, estimate_modality, *common], estimate_out)
    return demo


def launch(
    model: str,
    device: str = "cpu",
    dtype: str = "fp32",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    quantize: str | None = None,
    offload: str | None = None,
):
    demo = build_demo(model, device, dtype, quantize, offload)
    demo.queue().launch(server_name=host, server_port=port, share=share, show_error=True)
