"""The `unityvideo` command."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import yaml

from . import DEMO_MODEL
from .conversion import SafetensorsReader, convert_diffusers_to_released, convert_released_to_diffusers
from .conversion.convert import _weight_files
from .conversion.to_gguf import convert_released_to_gguf
from .hub import check_repo_id, network_errors, push_folder
from .jobs import ITEM_KEYS, run_split
from .jobs import run as run_job
from .low_memory import OFFLOAD_MODES, QUANTIZE_SCHEMES, check_low_memory
from .schedulers import SCHEDULER_NAMES
from .shapesworld.evaluation import evaluate_all, format_table
from .tasks import TASK_NAMES, resolve_task
from .training import TrainConfig, train
from .validation import check_model_source, check_size, load_yaml, numeric_problem, size_factors, unknown_key


def _convert(args: argparse.Namespace) -> str:

    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist.")
    if checkpoint.is_dir():
        if args.base or args.transformer_config or args.transformer_only or args.sha256 or args.push_to:
            raise ValueError(
                "Converting a diffusers folder back to the released layout takes only --output, --dtype, --overwrite."
            )
        output, digest = convert_diffusers_to_released(
            checkpoint, args.output, dtype=args.dtype, overwrite=args.overwrite, progress=not args.quiet
        )
        return f"Wrote the released-layout checkpoint {output} (sha256 {digest})."

    if args.to == "gguf" and (args.base or args.transformer_only or args.push_to):
        raise ValueError("--to gguf writes one .gguf file; it takes no --base, --transformer-only or --push-to.")
    if args.push_to:
        check_repo_id(args.push_to)  # before hours of conversion
    overrides = None
    if args.transformer_config:
        try:
            overrides = json.loads(Path(args.transformer_config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--transformer-config {args.transformer_config}: {error}") from None
    if args.to == "gguf":
        output = convert_released_to_gguf(
            checkpoint,
            args.output,
            quant=args.quant,
            transformer_config_overrides=overrides,
            sha256=args.sha256,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
        return f"Wrote the {args.quant} GGUF file {output}."
    output = convert_released_to_diffusers(
        checkpoint,
        args.output,
        base=args.base,
        transformer_config_overrides=overrides,
        transformer_only=args.transformer_only,
        dtype=args.dtype,
        sha256=args.sha256,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    what = "diffusers pipeline folder" if args.base else "diffusers transformer folder"
    if args.push_to:
        push_folder(output, args.push_to, private=True)
        return f"Wrote the {what} {output} and uploaded it (private) to https://huggingface.co/{args.push_to}."
    return f"Wrote the {what} {output}."


def _train(args: argparse.Namespace) -> str:

    overrides = {}
    for item in args.set or []:
        key, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}.")
        try:
            overrides[key] = load_yaml(value)
        except yaml.YAMLError as error:
            raise ValueError(f"--set {item}: {error}") from None
    if args.resume:
        overrides["resume"] = True
    config = TrainConfig.from_yaml(args.config, overrides) if args.config else TrainConfig.from_dict(overrides)
    export = train(config, progress=not args.quiet, encode_only=args.encode_only)
    if args.encode_only:
        return f"Encoded the training data into {export}."
    return f"Training done; wrote {export} (checkpoints and train_log.jsonl in {config.save_path})."


# ---------------------------------------------------------------- generate / control / estimate

JOB_DEFAULTS = dict(
    model=None,
    output=None,
    device="cpu",
    dtype="fp32",
    offload=None,
    quantize=None,
    vae_tiling=False,
    scheduler=None,  # None: the model folder's, as for the sampling settings below
    lora=None,
    lora_scale=1.0,
    steps=None,
    guidance_scale=None,
    seed=0,
    frames=None,
    height=None,
    width=None,
    fps=8,
    negative_prompt=None,
    modality=None,
    image=None,
    prompt=None,
    control_video=None,
    control_image=None,
    video=None,
)
NUMERIC_OPTIONS = {  # option -> whether it is a whole number
    "steps": True,
    "frames": True,
    "height": True,
    "width": True,
    "fps": True,
    "seed": True,
    "guidance_scale": False,
    "lora_scale": False,
}
JOB_OPTIONS = {
    "generate": {"prompt", "negative_prompt", "modality", "image"},
    "control": {"prompt", "negative_prompt", "modality", "control_video", "control_image"},
    "estimate": {"video", "modality", "prompt"},
    "restyle": {"video", "prompt", "negative_prompt", "modality"},
}
SHARED_OPTIONS = set(JOB_DEFAULTS) - {
    "prompt",
    "negative_prompt",
    "modality",
    "image",
    "control_video",
    "control_image",
    "video",
}


def _default_model() -> str:
    """The bundled ShapesWorld demo model, so every command runs on a fresh machine with no download."""

    if not (DEMO_MODEL / "model_index.json").is_file():
        raise ValueError("--model is required (a converted UnityVideo folder or Hub id); no bundled demo model here.")
    return str(DEMO_MODEL)


def _job_settings(job: str, args: argparse.Namespace) -> dict:
    """Defaults, then the YAML file, then the flags given on the command line (each level overrides the previous).
    Sampling settings left unset (size, frames, steps, guidance, scheduler) are the model folder's, filled in by the
    pipeline."""

    allowed = SHARED_OPTIONS | JOB_OPTIONS[job]
    settings = {key: value for key, value in JOB_DEFAULTS.items() if key in allowed}
    if job == "restyle":
        settings["modality"] = "depth"  # structure and motion, without the original's colours
    explicit = _read_job_config(args.config, allowed) if args.config else {}
    explicit.update({key: value for key, value in vars(args).items() if key in allowed and value is not None})
    settings.update(explicit)
    if isinstance(settings["offload"], bool):  # `offload: true` in a YAML file written before the modes existed
        settings["offload"] = "model" if settings["offload"] else None
    if settings.get("model") is None:
        settings["model"] = _default_model()
    required = {
        "generate": ["prompt"],
        "control": ["prompt", "modality"],
        "estimate": ["video", "modality"],
        "restyle": ["video", "prompt"],
    }[job]
    missing = [name for name in required if not settings.get(name)]
    if job == "control" and not (settings.get("control_video") or settings.get("control_image")):
        missing.append("control_video or control_image")
    if missing:
        raise ValueError(f"{job} needs {', '.join(missing)}.")
    for name in ("video", "control_video", "control_image", "image"):
        if settings.get(name) and not Path(settings[name]).exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {settings[name]} does not exist.")
    for name, whole in NUMERIC_OPTIONS.items():
        if settings.get(name) is not None:
            problem, settings[name] = numeric_problem(name, settings[name], whole)
            if problem:
                raise ValueError(f"{problem}.")
    vae_factor, patch = size_factors(settings["model"])  # the pipeline's rule, before it is loaded
    for name in ("height", "width"):
        if settings[name] is not None:
            check_size(name, settings[name], vae_factor, patch)
    for name in ("steps", "fps"):
        if settings[name] is not None and settings[name] <= 0:
            raise ValueError(f"{name} must be a positive integer, got {settings[name]!r}.")
    if not math.isfinite(settings["lora_scale"]):
        raise ValueError(f"lora_scale must be a finite number, got {settings['lora_scale']!r}.")
    if settings["frames"] is not None and (
        not isinstance(settings["frames"], int) or (settings["frames"] - 1) % 4 or settings["frames"] < 1
    ):
        raise ValueError(f"frames must be 4k+1 (1, 5, 9, ..., 33, ...), got {settings['frames']!r}.")
    if settings["output"] is None:
        settings["output"] = f"outputs/{job}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
    return settings


def _read_job_config(path: str, allowed: set[str]) -> dict:

    try:
        values = load_yaml(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"Cannot read --config {path}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must be a mapping of option names to values.")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    for key in values:
        if key not in allowed:
            raise ValueError(unknown_key(key, allowed, path))
    return values


def _apply_config(args: argparse.Namespace) -> None:
    """Fill the options not given on the command line from --config, then check the required ones."""
    internal = {"config", "run", "parser", "required", "command"}
    names = {action.dest for action in args.parser._actions if action.dest != "help"} - internal
    if args.config:
        for key, value in _read_job_config(args.config, names).items():
            if getattr(args, key) == args.parser.get_default(key):
                setattr(args, key, value)
    missing = [name for name in args.required if getattr(args, name) in (None, "")]
    if missing:
        raise ValueError(
            f"missing {', '.join('--' + name.replace('_', '-') for name in missing)} (a flag or a --config key)."
        )


def _job(job: str):
    def run(args: argparse.Namespace) -> str:

        if getattr(args, "prompts", None) or getattr(args, "videos", None):
            return _run_many(job, args)
        record = run_job(job, _job_settings(job, args))
        return f"Wrote {', '.join(record['outputs'].values())} and {record['record']}."

    return run


VIDEO_SUFFIXES = {".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv"}


def _run_many(job: str, args: argparse.Namespace) -> str:
    """`generate --prompts FILE` (one prompt a line) or `estimate --videos FOLDER` (its video files and frame folders):
    every item into the --output folder, shared among the processes of `accelerate launch` when there are several."""

    key = ITEM_KEYS[job]
    if getattr(args, key):
        raise ValueError(f"Give --{key}s or one {key}, not both.")
    if job == "generate":
        source = Path(args.prompts)
        if not source.is_file():
            raise FileNotFoundError(f"--prompts {source} is not a file.")
        items = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        source = Path(args.videos)
        if not source.is_dir():
            raise FileNotFoundError(f"--videos {source} is not a folder.")
        items = [
            str(path)
            for path in sorted(source.iterdir())
            if not path.name.startswith(".") and (path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES)
        ]
    if not items:
        raise ValueError(f"{source} holds no {key}s.")
    setattr(args, key, items[0])  # checked with the other settings before anything is loaded
    args.output = args.output or f"outputs/{job}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = _job_settings(job, args)
    if Path(settings["output"]).suffix:
        raise ValueError(f"--output is a folder when running many {key}s, got {settings['output']}.")
    records = run_split(job, settings, items)
    return (
        f"Wrote {len(records)} of {len(items)} {key}s' outputs and records into {settings['output']} (this process)."
    )


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="converted UnityVideo folder or Hub id (default: the bundled demo model)")
    parser.add_argument("--config", help="YAML file of these options (flags override it)")
    parser.add_argument(
        "--output", help="mp4 (default), gif, or a folder for PNG frames; a JSON record goes beside it"
    )
    parser.add_argument("--device", help="cpu (default), cuda, cuda:1, mps ...")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    _add_low_memory_options(parser)
    parser.add_argument("--vae-tiling", action="store_true", default=None, help="decode in tiles (low memory)")
    parser.add_argument(
        "--scheduler", choices=SCHEDULER_NAMES, help="default: the model's (reference: the authors' sampler)"
    )
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance, 1 = off (default: the model's)"
    )
    parser.add_argument(
        "--lora", help="a LoRA to load: a `unityvideo train` export or diffusers LoRA, folder or Hub id"
    )
    parser.add_argument("--lora-scale", type=float, help="strength of the LoRA's adapters (default 1)")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--frames", type=int, help="4k+1 (default: the model's; control and estimate: the video's length)"
    )
    parser.add_argument("--height", type=int, help="default: the model's")
    parser.add_argument("--width", type=int, help="default: the model's")
    parser.add_argument("--fps", type=int, help="frame rate of the written videos (default 8)")


def _add_low_memory_options(parser: argparse.ArgumentParser) -> None:

    parser.add_argument(
        "--offload",
        nargs="?",
        const="model",
        choices=list(OFFLOAD_MODES),
        help="keep weights on the CPU until used: "
        + "; ".join(f"{k}: {v}" for k, v in OFFLOAD_MODES.items())
        + " (--offload alone: model)",
    )
    parser.add_argument(
        "--quantize",
        metavar="SCHEME",
        help="the transformer in less memory: "
        + "; ".join(f"{k}: {v}" for k, v in QUANTIZE_SCHEMES.items())
        + "; or a .gguf file (unityvideo convert --to gguf)",
    )


def _job_parser(commands, task_name: str, help_suffix: str = "") -> argparse.ArgumentParser:
    """A job's subcommand, named by its verb in the task table, with the job's other names as aliases."""
    task = resolve_task(task_name)
    aliases = [name for name in (task.name, *task.aliases) if name != task.verb]
    parser = commands.add_parser(task.verb, aliases=aliases, help=task.summary + help_suffix)
    parser.set_defaults(verb=task.verb)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unityvideo", description="UnityVideo on Hugging Face diffusers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="released checkpoint <-> diffusers folder",
        description=(
            "Convert the released UnityVideo checkpoint (one .safetensors file) into a diffusers folder, or a "
            "UnityVideo diffusers folder back into the released layout (when --checkpoint is a folder)."
        ),
    )
    convert.add_argument("--checkpoint", help="released .safetensors file, or a diffusers folder (required)")
    convert.add_argument("--output", help="output folder, or .safetensors file when converting back (required)")
    convert.add_argument("--config", help="YAML file of these options (flags override it)")
    convert.add_argument(
        "--base",
        help="Wan2.2-TI2V-5B diffusers folder or Hub id: also write vae, text encoder, "
        "tokenizer, scheduler and model_index.json (a complete pipeline folder)",
    )
    convert.add_argument(
        "--transformer-config",
        help="JSON of UnityVideoTransformer3DModel config keys (default: the released 5B config)",
    )
    convert.add_argument(
        "--transformer-only", action="store_true", help="write the transformer folder itself as --output"
    )
    convert.add_argument(
        "--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of the written weights"
    )
    convert.add_argument(
        "--sha256", help="expected SHA-256 of --checkpoint (the released files are checked by default)"
    )
    convert.add_argument("--max-shard-size", default="5GB", help="largest weight file, e.g. 5GB or 500MB")
    convert.add_argument(
        "--to", default="diffusers", choices=["diffusers", "gguf"], help="a diffusers folder (default) or a GGUF file"
    )
    convert.add_argument("--quant", default="Q8_0", help="with --to gguf: Q8_0 (default), Q5_0, Q4_1 or Q4_0")
    convert.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    convert.add_argument("--push-to", metavar="REPO_ID", help="then upload the folder (private) with a model card")
    convert.add_argument("--quiet", action="store_true", help="no progress bars")
    convert.set_defaults(run=_convert, parser=convert, required=("checkpoint", "output"))

    trainer = commands.add_parser(
        "train",
        help="LoRA or full fine-tuning (also under `accelerate launch`)",
        description="Fine-tune UnityVideo with the authors' multi-task recipe; settings from a YAML file.",
    )
    trainer.add_argument("--config", help="YAML file of training settings (see TrainConfig)")
    trainer.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    trainer.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in save_path")
    trainer.add_argument("--quiet", action="store_true", help="no progress bars")
    trainer.add_argument(
        "--encode-only",
        action="store_true",
        help="only build the latent cache (under `accelerate launch`, every process encodes its share), then stop",
    )
    trainer.set_defaults(run=_train)

    generate = _job_parser(commands, "joint")
    generate.add_argument("prompt", nargs="?")
    generate.add_argument("--modality", help="also generate this modality (depth, raft, segmentation, ...)")
    generate.add_argument("--image", help="first frame to keep (image file)")
    generate.add_argument("--negative-prompt")
    generate.add_argument(
        "--prompts", help="a file of prompts, one a line: each into --output (a folder), shared among processes"
    )
    _add_job_options(generate)
    generate.set_defaults(run=_job("generate"))

    control = _job_parser(commands, "control")
    control.add_argument("prompt", nargs="?")
    control.add_argument("--control-video", help="the modality video (file or frame folder)")
    control.add_argument("--control-image", help="a single control image, held for every frame")
    control.add_argument("--modality", help="what the control shows (depth, raft, segmentation, ...)")
    control.add_argument("--negative-prompt")
    _add_job_options(control)
    control.set_defaults(run=_job("control"))

    estimate = _job_parser(commands, "perception", help_suffix=" (+ numbers)")
    estimate.add_argument("video", nargs="?")
    estimate.add_argument("--modality", help="what to estimate (depth, raft, segmentation, ...)")
    estimate.add_argument("--prompt", help="optional caption of the video")
    estimate.add_argument(
        "--videos",
        help="a folder of videos (files or frame folders): each into --output (a folder), shared among processes",
    )
    _add_job_options(estimate)
    estimate.set_defaults(run=_job("estimate"))

    restyle = commands.add_parser(
        "restyle", help="a video -> its depth (or other modality) -> a new video from a new prompt"
    )
    restyle.add_argument("video", nargs="?")
    restyle.add_argument("prompt", nargs="?")
    restyle.add_argument("--modality", help="what carries the structure (default depth; segmentation, raft, ...)")
    restyle.add_argument("--negative-prompt")
    _add_job_options(restyle)
    restyle.set_defaults(run=_job("restyle"))

    push = commands.add_parser("push", help="upload a model folder to the Hub with a generated model card")
    push.add_argument("folder", nargs="?")
    push.add_argument("--repo-id", help="owner/name (required)")
    push.add_argument("--config", help="YAML file of these options (flags override it)")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="Hub token (default: the logged-in one)")
    push.add_argument("--commit-message")
    push.add_argument("--create-pr", action="store_true")
    push.add_argument("--base-model", default="KlingTeam/UnityVideo", help="base_model of the card")
    push.add_argument("--overwrite-card", action="store_true", help="regenerate README.md even if the folder has one")
    push.set_defaults(run=_push, parser=push, required=("folder", "repo_id"))

    demo = commands.add_parser("demo", help="web demo of the three jobs (Gradio)")
    demo.add_argument("--model", help="converted UnityVideo folder or Hub id (default: the bundled demo model)")
    demo.add_argument("--config", help="YAML file of these options (flags override it)")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true", help="a public Gradio link")
    _add_low_memory_options(demo)
    demo.set_defaults(run=_demo, parser=demo, required=())

    evaluation = commands.add_parser("eval", help="quality on held-out ShapesWorld scenes, against baselines")
    evaluation.add_argument("--model", help="a model trained on ShapesWorld (default: the bundled demo model)")
    evaluation.add_argument(
        "--data",
        required=True,
        help="a ShapesWorld eval split folder (python -m unityvideo_diffusers.shapesworld.world)",
    )
    evaluation.add_argument("--baseline-model", help="e.g. the untrained starting folder")
    evaluation.add_argument(
        "--steps", type=int, nargs="+", help="step counts to score (default: the model's, each job its own)"
    )
    evaluation.add_argument("--schedulers", nargs="+", default=["default"])
    evaluation.add_argument(
        "--flow-shift", type=float, help="the schedulers' flow shift (default: the model folder's scheduler's)"
    )
    evaluation.add_argument("--limit", type=int, help="only the first N clips")
    evaluation.add_argument(
        "--guidance-scale", type=float, help="for control and text -> video (default: the model's for each)"
    )
    evaluation.add_argument(
        "--vae-ceiling", action="store_true", help="also score the model's VAE reconstructions of the true clips"
    )
    evaluation.add_argument(
        "--jobs",
        nargs="+",
        choices=TASK_NAMES,
        help="score only these (default: all three)",
    )
    evaluation.add_argument(
        "--shape-reader",
        choices=["calibrated", "exact"],
        default="calibrated",
        help="read shapes as the model's VAE draws them (fitted on fresh scenes of the world), or as drawn exactly",
    )
    evaluation.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    evaluation.add_argument("--output", default="quality.json")
    evaluation.set_defaults(run=_eval)

    info = commands.add_parser("info", help="what a model folder holds")
    info.add_argument("model", nargs="?", help="a UnityVideo pipeline or transformer folder (required; or --model)")
    info.add_argument("--model", dest="model_option", metavar="MODEL", help="the same, as the other commands take it")
    info.add_argument("--config", help="YAML file of these options")
    info.set_defaults(run=_info, parser=info, required=())
    return parser


def _demo(args: argparse.Namespace) -> str:

    args.model = args.model or _default_model()
    try:
        from .demo import launch
    except ImportError as error:
        raise ValueError(f"The demo needs Gradio: pip install 'unityvideo-diffusers[demo]' ({error}).") from None
    check_model_source(args.model, "--model")

    check_low_memory(args.quantize, args.offload, args.device)  # before the demo loads anything
    launch(args.model, args.device, args.dtype, args.host, args.port, args.share, args.quantize, args.offload)
    return "Demo stopped."


def _eval(args: argparse.Namespace) -> str:

    results = evaluate_all(
        args.model or _default_model(),
        args.data,
        steps=tuple(args.steps) if args.steps else None,
        schedulers=tuple(args.schedulers),
        limit=args.limit,
        jobs=tuple(args.jobs or TASK_NAMES),
        guidance_scale=args.guidance_scale,
        baseline_model=args.baseline_model,
        with_vae_ceiling=args.vae_ceiling,
        shape_reader=args.shape_reader,
        device=args.device,
        flow_shift=args.flow_shift,
    )
    Path(args.output).write_text(json.dumps(results, indent=2))
    return f"{format_table(results)}\nWrote {args.output}."


def _push(args: argparse.Namespace) -> str:

    if not Path(args.folder).is_dir():
        raise FileNotFoundError(f"{args.folder} is not a folder.")
    push_folder(
        args.folder,
        args.repo_id,
        private=args.private or None,
        token=args.token,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        base_model=args.base_model,
        overwrite_card=args.overwrite_card,
    )
    return f"Uploaded {args.folder} to https://huggingface.co/{args.repo_id}."


def _info(args: argparse.Namespace) -> str:
    if args.model and args.model_option and args.model != args.model_option:
        raise ValueError(f"Two models given: {args.model} and --model {args.model_option}.")
    if not (args.model or args.model_option):
        raise ValueError("missing the model folder (unityvideo info FOLDER, or --model FOLDER).")
    folder = Path(args.model or args.model_option)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder.")
    transformer = folder / "transformer" if (folder / "transformer" / "config.json").is_file() else folder
    if not (transformer / "config.json").is_file():
        raise ValueError(f"{folder} holds no UnityVideo transformer (no config.json in it or in transformer/).")
    config = json.loads((transformer / "config.json").read_text())
    if config.get("_class_name") != "UnityVideoTransformer3DModel":
        raise ValueError(f"{transformer} holds a {config.get('_class_name')}, not a UnityVideo transformer.")

    tensors = SafetensorsReader(_weight_files(transformer)).tensors
    parameters = sum(math.prod(info.shape) for info in tensors.values())
    dtypes = sorted({str(info.dtype).removeprefix("torch.") for info in tensors.values()})
    index = json.loads((folder / "model_index.json").read_text()) if (folder / "model_index.json").is_file() else {}
    lines = [
        f"model: {folder}",
        f"pipeline: {index.get('_class_name', '(transformer only)')}; components: "
        + ", ".join(f"{k}={v[1]}" for k, v in sorted(index.items()) if isinstance(v, list) and v[1]),
        f"transformer: {parameters / 1e6:.1f}M parameters, {', '.join(dtypes)}, {config['num_layers']} layers, "
        f"{config['num_attention_heads']}x{config['attention_head_dim']} heads, {config['in_channels']} latent channels",
        f"modalities: {', '.join(config.get('modalities', []))}",
        f"options: modality_adaln={config.get('modality_adaln', False)}, task_embedding={config.get('task_embedding', False)}",
    ]
    return "\n".join(lines)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "verb", args.command)
    try:
        if hasattr(args, "parser"):  # commands whose options may also come from --config
            _apply_config(args)
        message = args.run(args)
    except OSError as error:  # files, and the Hub's HTTP errors (whose messages run over several lines)
        parser.exit(2, f"unityvideo {command}: error: {_first_line(error)}\n")
    except (ValueError, TypeError) as error:
        parser.exit(2, f"unityvideo {command}: error: {error}\n")
    except network_errors() as error:  # the HTTP library's own: no connection at all
        parser.exit(2, f"unityvideo {command}: error: cannot reach the Hugging Face Hub: {_first_line(error)}\n")
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
