"""Config-file inference from flat YAML files (the keys of the UnityVideo article's inference configs).

    python scripts/inference.py --config configs/inference/text2video_config.yaml [--device cpu]

Keys: model_path, text_prompt, video_length, resolution, guidance_scale, seed, output_path, control_type,
control_image_path (or control_video_path), video_path + estimate_type (estimation), num_inference_steps, fps,
negative_prompt, task. The job follows from the keys: control_type -> control, estimate_type -> estimation, else text
-> video; `task` (text2video, flow2video, video2flow, ...) may name it too. Values the model cannot use are turned into the nearest ones it can, and the script says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from unityvideo_diffusers.cli import NUMERIC_OPTIONS
from unityvideo_diffusers.hub import network_errors
from unityvideo_diffusers.tasks import resolve_task
from unityvideo_diffusers.validation import check_model_source, load_yaml, numeric_problem, size_factors, unknown_key


KEYS = {  # config-file key -> unityvideo job setting
    "model_path": "model",
    "text_prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "guidance_scale": "guidance_scale",
    "seed": "seed",
    "output_path": "output",
    "num_inference_steps": "steps",
    "fps": "fps",
    "modality": "modality",
    "control_type": "modality",
    "control_image_path": "control_image",
    "control_video_path": "control_video",
    "video_path": "video",
    "estimate_type": "modality",
    "image_path": "image",
    "scheduler": "scheduler",
    "dtype": "dtype",
}
TRAINING_ONLY = {"gradient_checkpointing", "learning_rate", "batch_size", "max_epochs", "dataset_path", "save_path"}
SPECIAL = {"video_length", "resolution", "device", "task"}


def nearest_frames(frames: int) -> int:
    return max(1, round((frames - 1) / 4) * 4 + 1)


def nearest_size(size: int, multiple: int) -> int:
    return max(multiple, round(size / multiple) * multiple)


def parse_resolution(value) -> tuple[int, int]:
    """256, "256", "448x256" (width x height), or [256, 448] (height, width) -> (height, width)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        height, width = value
    elif isinstance(value, str) and value.lower().count("x") == 1:
        width, height = value.lower().split("x")
    else:
        height = width = value
    sizes = [numeric_problem("resolution", size, whole=True) for size in (height, width)]
    if any(problem for problem, _ in sizes):
        raise ValueError(f'resolution must be 256, "448x256" (width x height) or [256, 448], got {value!r}.')
    return sizes[0][1], sizes[1][1]


def settings_from(config: dict, device: str | None) -> tuple[str, dict, list[str]]:
    notes, settings = [], {}
    for key, value in config.items():
        if key in TRAINING_ONLY:
            notes.append(f"{key} is a training setting; ignored at inference.")
        elif key in KEYS:
            if KEYS[key] in NUMERIC_OPTIONS:  # named by the file's key, as the user wrote it
                problem, value = numeric_problem(key, value, whole=NUMERIC_OPTIONS[KEYS[key]])
                if problem:
                    raise ValueError(f"{problem}.")
            settings[KEYS[key]] = value
        elif key not in SPECIAL:
            raise ValueError(unknown_key(key, KEYS.keys() | SPECIAL))
    if "video_length" in config:
        problem, frames = numeric_problem("video_length", config["video_length"], whole=True)
        if problem:
            raise ValueError(f"{problem}.")
        settings["frames"] = nearest_frames(frames)
        if settings["frames"] != frames:
            notes.append(f"video_length {frames} is not 4k+1; using {settings['frames']}.")
    if "resolution" in config:
        height, width = parse_resolution(config["resolution"])
        vae_factor, patch = size_factors(config.get("model_path", ""))  # the model's rule: 32 for the released one
        for name, value in (("height", height), ("width", width)):
            settings[name] = nearest_size(value, vae_factor * patch)
            if settings[name] != value:
                notes.append(f"{name} {value} is not a multiple of {vae_factor * patch}; using {settings[name]}.")
    if device or config.get("device"):
        settings["device"] = device or config["device"]
    job = "control" if "control_type" in config else "estimate" if "estimate_type" in config else "generate"
    if "task" in config:  # text2video, flow2video, video2flow, ... (the job vocabulary of tasks.py)
        named = resolve_task(config["task"]).verb
        if named != job and ("control_type" in config or "estimate_type" in config):
            raise ValueError(f"task {config['task']!r} is the {named} job, but the keys given are the {job} job's.")
        job = named
    return job, settings, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--device", help="cpu, cuda, ... (overrides the file)")
    args = parser.parse_args(argv)
    try:
        config = load_yaml(Path(args.config).read_text()) or {}
        job, settings, notes = settings_from(config, args.device)
        for note in notes:
            print(f"note: {note}")
        from unityvideo_diffusers.cli import JOB_DEFAULTS, JOB_OPTIONS, SHARED_OPTIONS
        from unityvideo_diffusers.jobs import run

        allowed = SHARED_OPTIONS | JOB_OPTIONS[job]
        full = {**{k: v for k, v in JOB_DEFAULTS.items() if k in allowed}, **settings}
        if job != "generate" and "frames" not in settings:
            full["frames"] = None
        if not full.get("model"):
            raise ValueError("model_path is required.")
        check_model_source(full["model"], "model_path")
        full["output"] = full["output"] or f"outputs/{job}.mp4"
        record = run(job, full)
    except (ValueError, TypeError, yaml.YAMLError) as error:
        print(f"inference.py: error: {error}", file=sys.stderr)
        return 2
    except network_errors() as error:  # files, and the Hub's (OSErrors or its HTTP library's, over several lines)
        print(f"inference.py: error: {(str(error).strip() or type(error).__name__).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"Wrote {', '.join(record['outputs'].values())} and {record['record']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
