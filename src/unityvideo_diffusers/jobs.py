"""The three jobs as the command line runs them: load a pipeline, run, write videos, numbers and a JSON record."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .low_memory import check_low_memory, loading_kwargs, place
from .modalities import decode_depth, decode_flow, decode_segmentation
from .video_io import load_frames, save_video


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODERS = {
    "depth": ("disparity", decode_depth),
    "raft": ("flow", decode_flow),
    "segmentation": ("labels", decode_segmentation),
}


def recipe_defaults(model: str | Path) -> dict:
    """What a model trained at its own size (the demo model) records in its folder's `recipe.json`: the size it
    works at and its sampling settings, as height, width, frames, steps and guidance_scale (empty for other models)."""
    recipe = Path(model) / "recipe.json"
    if not recipe.is_file():
        return {}
    recipe = json.loads(recipe.read_text())
    return {**recipe.get("world", {}), **recipe.get("sampling", {})}


def make_scheduler(name: str, pipe):
    """'default' keeps the folder's scheduler; 'reference' is the authors' sampler; others are diffusers' own, with
    the folder scheduler's flow shift."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from .schedulers import LinearFlowMatchEulerScheduler

    # the folder's shift is the one its model was trained for (5 for the release)
    config = pipe.scheduler.config
    shift = float(config.get("flow_shift") if config.get("use_flow_sigmas") else config.get("shift", 5.0))
    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    choices = {
        "default": lambda: pipe.scheduler,
        "reference": LinearFlowMatchEulerScheduler,
        "euler": lambda: FlowMatchEulerDiscreteScheduler(shift=shift),
        "unipc": lambda: UniPCMultistepScheduler(**flow),
        "dpm": lambda: DPMSolverMultistepScheduler(**flow),
    }
    if name not in choices:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(choices)}.")
    return choices[name]()


def load_pipeline(
    pipeline_class,
    model: str,
    device: str,
    dtype: str,
    offload: str | None,
    vae_tiling: bool,
    scheduler: str,
    quantize: str | None = None,
):
    """`offload`: None, "model", "group" or "sequential"; `quantize`: None, "int8", "fp8", "nf4" or a .gguf file."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if not Path(model).exists() and model.count("/") != 1:
        raise FileNotFoundError(f"--model {model} is neither a folder nor a Hub id (owner/name).")
    check_low_memory(quantize, offload, device)
    pipe = pipeline_class.from_pretrained(model, dtype=DTYPES[dtype], **loading_kwargs(quantize, DTYPES[dtype]))
    pipe.scheduler = make_scheduler(scheduler, pipe)
    if vae_tiling:
        pipe.vae.enable_tiling()
    place(pipe, quantize, offload, device, DTYPES[dtype])
    return pipe


def write_outputs(output: Path, frames, modality_frames, modality: str | None, fps: int, numbers: bool) -> dict:
    """Write the first video(s) of a result next to each other: `output` (RGB) and `<stem>_<modality><suffix>`."""
    written = {}
    if frames is not None:
        written["video"] = str(save_video(frames[0], output, fps=fps))
    if modality_frames is not None:
        target = output.with_name(f"{output.stem}_{modality}{output.suffix}") if frames is not None else output
        written["modality_video"] = str(save_video(modality_frames[0], target, fps=fps))
        if numbers and modality in DECODERS:
            name, decode = DECODERS[modality]
            path = target.with_name(f"{target.stem}_{name}.npz" if target.suffix else f"{target.name}_{name}.npz")
            np.savez_compressed(path, **{name: decode(np.asarray(modality_frames[0], dtype=np.float64))})
            written["numbers"] = str(path)
    return written


def run(job: str, settings: dict) -> dict:
    """Run `job` ("generate", "control", "estimate") with `settings` (the command's options); returns the record."""
    from .pipelines import UnityVideoControlPipeline, UnityVideoPerceptionPipeline, UnityVideoPipeline

    started = time.perf_counter()
    pipeline_class = {
        "generate": UnityVideoPipeline,
        "control": UnityVideoControlPipeline,
        "estimate": UnityVideoPerceptionPipeline,
        "restyle": UnityVideoPerceptionPipeline,
    }[job]
    output = Path(settings["output"])
    modality = settings.get("modality")
    pipe = load_pipeline(
        pipeline_class,
        settings["model"],
        settings["device"],
        settings["dtype"],
        settings["offload"],
        settings["vae_tiling"],
        settings["scheduler"],
        settings.get("quantize"),
    )
    loaded = time.perf_counter()
    modality = pipe.transformer.resolve_modality_name(modality) if modality else None  # "flow" -> "raft"
    common = dict(
        height=settings["height"],
        width=settings["width"],
        num_inference_steps=settings["steps"],
        guidance_scale=settings["guidance_scale"],
        generator=torch.Generator().manual_seed(settings["seed"]),
    )
    if job == "generate":
        image = load_frames(settings["image"])[0] if settings.get("image") else None
        result = pipe(
            settings["prompt"],
            negative_prompt=settings.get("negative_prompt"),
            modality=modality,
            image=image,
            num_frames=settings["frames"],
            **common,
        )
    elif job == "control":
        control = settings.get("control_video")
        if settings.get("control_image"):
            control = load_frames(settings["control_image"])[:1] * settings["frames"]  # a still control, held
        result = pipe(
            settings["prompt"],
            control_video=control,
            modality=modality,
            negative_prompt=settings.get("negative_prompt"),
            num_frames=settings.get("frames"),
            **common,
        )
    elif job == "estimate":
        result = pipe(
            video=settings["video"],
            modality=modality,
            prompt=settings.get("prompt") or "",
            num_frames=settings.get("frames"),
            **common,
        )
    else:  # restyle: the video's modality (its structure and motion), then a new video that follows it
        structure = pipe(
            video=settings["video"],
            modality=modality,
            num_frames=settings.get("frames"),
            **{**common, "guidance_scale": 1.0},
        )
        control = UnityVideoControlPipeline.from_pipe(pipe)
        result = control(
            settings["prompt"],
            control_video=structure.modality_frames[0],
            modality=modality,
            negative_prompt=settings.get("negative_prompt"),
            **common,
        )
        result.modality_frames = structure.modality_frames
    generated = time.perf_counter()
    written = write_outputs(
        output, result.frames, result.modality_frames, modality, settings["fps"], job == "estimate"
    )
    record = {
        "job": job,
        "settings": settings,
        "outputs": written,
        "seconds": {
            "load": round(loaded - started, 3),
            "generate": round(generated - loaded, 3),
            "total": round(time.perf_counter() - started, 3),
        },
    }
    record_path = output.with_name(f"{output.stem or output.name}.json")
    record_path.write_text(json.dumps(record, indent=2, default=str))
    record["record"] = str(record_path)
    return record
