"""The three jobs as the command line runs them: load a pipeline, run, write videos, numbers and a JSON record."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState

from .low_memory import check_low_memory, loading_kwargs, place
from .modalities import decode_depth, decode_flow, decode_segmentation
from .pipelines import UnityVideoControlPipeline, UnityVideoPerceptionPipeline, UnityVideoPipeline
from .schedulers import scheduler_by_name
from .tasks import resolve_task
from .validation import check_model_source
from .video_io import load_frames, save_video


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODERS = {
    "depth": ("disparity", decode_depth),
    "raft": ("flow", decode_flow),
    "segmentation": ("labels", decode_segmentation),
}


def load_pipeline(
    pipeline_class,
    model: str,
    device: str,
    dtype: str,
    offload: str | None,
    vae_tiling: bool,
    scheduler: str | None,
    lora: str | None = None,
    lora_scale: float = 1.0,
    quantize: str | None = None,
):
    """The job's pipeline. `offload`: None, "model", "group" or "sequential"; `quantize`: None, "int8", "fp8", "nf4"
    or a .gguf file; `lora` (a trainer's export or any diffusers LoRA, folder or Hub id) loaded as the adapter "lora"
    at `lora_scale` (the modality-stream weights of an export apply in full)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    check_model_source(model, "--model")
    if lora is not None:
        check_model_source(lora, "--lora")
    check_low_memory(quantize, offload, device)
    pipe = pipeline_class.from_pretrained(model, dtype=DTYPES[dtype], **loading_kwargs(quantize, DTYPES[dtype]))
    if scheduler is not None:  # None: the folder's, for each job its own
        pipe.scheduler = scheduler_by_name(scheduler, pipe.scheduler)
    if lora is not None:
        pipe.load_lora_weights(lora, adapter_name="lora")
        pipe.set_adapters("lora", lora_scale)
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


def used_settings(pipe, job: str, settings: dict) -> dict:
    """The command's settings with the ones it left unset filled in as the pipeline resolves them for `job`."""
    defaults = pipe.job_defaults(job)
    names = dict(height="height", width="width", steps="num_inference_steps", guidance_scale="guidance_scale")
    if job == "joint":  # control and estimation take their conditioning video's length
        names["frames"] = "num_frames"
    filled = {key: defaults[name] for key, name in names.items() if settings.get(key) is None}
    if settings.get("scheduler") is None:
        filled["scheduler"] = f"{defaults['scheduler']} ({type(pipe.job_scheduler(job)).__name__})"
    return {**settings, **filled}


def pipeline_for(job: str, settings: dict):

    pipeline_class = {
        "generate": UnityVideoPipeline,
        "control": UnityVideoControlPipeline,
        "estimate": UnityVideoPerceptionPipeline,
        "restyle": UnityVideoPerceptionPipeline,
    }[job]
    return load_pipeline(
        pipeline_class,
        settings["model"],
        settings["device"],
        settings["dtype"],
        settings["offload"],
        settings["vae_tiling"],
        settings["scheduler"],
        settings.get("lora"),
        settings.get("lora_scale", 1.0),
        settings.get("quantize"),
    )


def run(job: str, settings: dict, pipe=None) -> dict:
    """Run the command `job` (generate, control, estimate, restyle) with `settings` (its options); returns the
    record, also written beside the outputs. `pipe`: the job's pipeline already loaded with these settings (runs
    over many inputs load it once)."""

    started = time.perf_counter()
    output = Path(settings["output"])
    modality = settings.get("modality")
    if pipe is None:
        pipe = pipeline_for(job, settings)
    loaded = time.perf_counter()
    modality = pipe.transformer.resolve_modality_name(modality) if modality else None  # "flow" -> "raft"
    common = dict(
        height=settings["height"],
        width=settings["width"],
        num_inference_steps=settings["steps"],
        generator=torch.Generator().manual_seed(settings["seed"]),
    )
    guidance = dict(guidance_scale=settings["guidance_scale"])
    if job == "generate":
        image = load_frames(settings["image"])[0] if settings.get("image") else None
        result = pipe(
            settings["prompt"],
            negative_prompt=settings.get("negative_prompt"),
            modality=modality,
            image=image,
            num_frames=settings["frames"],
            **common,
            **guidance,
        )
    elif job == "control":
        result = pipe(
            settings["prompt"],
            control_video=settings.get("control_image") or settings.get("control_video"),  # a still is held
            modality=modality,
            negative_prompt=settings.get("negative_prompt"),
            num_frames=settings.get("frames"),
            **common,
            **guidance,
        )
    elif job == "estimate":
        result = pipe(
            video=settings["video"],
            modality=modality,
            prompt=settings.get("prompt") or "",
            num_frames=settings.get("frames"),
            **common,
            **guidance,
        )
    else:  # restyle: the estimate runs with its own guidance, the new video with the command's
        structure = pipe(video=settings["video"], modality=modality, num_frames=settings.get("frames"), **common)
        control = UnityVideoControlPipeline.from_pipe(pipe)
        result = control(
            settings["prompt"],
            control_video=structure.modality_frames[0],
            modality=modality,
            negative_prompt=settings.get("negative_prompt"),
            **common,
            **guidance,
        )
        result.modality_frames = structure.modality_frames
    generated = time.perf_counter()
    written = write_outputs(
        output, result.frames, result.modality_frames, modality, settings["fps"], job == "estimate"
    )
    record = {
        "job": job,
        "settings": used_settings(pipe, "control" if job == "restyle" else resolve_task(job).name, settings),
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


ITEM_KEYS = {"generate": "prompt", "estimate": "video"}


def run_split(job: str, settings: dict, items: list[str]) -> list[dict]:
    """Run `job` once per item (a prompt of `generate`, a video of `estimate`), the items shared among the processes
    of `accelerate launch` (accelerate's `split_between_processes`; one process runs them all). Item i is written as
    `<output folder>/<i>.mp4` with its record beside it and sampled with seed `seed + i`, whichever process runs it,
    so the files do not depend on the number of processes. Returns this process's records."""

    state = PartialState(cpu=settings["device"] == "cpu")
    if settings["device"] != "cpu" and settings["device"] == state.device.type:  # "cuda": this process's own GPU
        settings = {**settings, "device": str(state.device)}  # cuda:<local rank>
    folder, key = Path(settings["output"]), ITEM_KEYS[job]
    records, pipe = [], None
    with state.split_between_processes(list(enumerate(items))) as mine:
        for index, item in mine:
            stem = f"{index:05d}" if job == "generate" else f"{index:05d}_{Path(item).stem}"
            if pipe is None:  # loaded once, and only by a process that has items
                pipe = pipeline_for(job, settings)
            item_settings = {
                **settings,
                key: item,
                "seed": settings["seed"] + index,
                "output": str(folder / f"{stem}.mp4"),
            }
            records.append(run(job, item_settings, pipe))
    return records
