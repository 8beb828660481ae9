"""The `unityvideo` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _convert(args: argparse.Namespace) -> str:
    from .conversion import convert_diffusers_to_released, convert_released_to_diffusers

    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist.")
    if checkpoint.is_dir():
        if args.base or args.transformer_config or args.transformer_only or args.sha256:
            raise ValueError(
                "Converting a diffusers folder back to the released layout takes only --output, --dtype, --overwrite."
            )
        output, digest = convert_diffusers_to_released(
            checkpoint, args.output, dtype=args.dtype, overwrite=args.overwrite, progress=not args.quiet
        )
        return f"Wrote the released-layout checkpoint {output} (sha256 {digest})."

    overrides = None
    if args.transformer_config:
        try:
            overrides = json.loads(Path(args.transformer_config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--transformer-config {args.transformer_config}: {error}") from None
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
    return f"Wrote the {what} {output}."


def _train(args: argparse.Namespace) -> str:
    from .training import TrainConfig, train

    overrides = {}
    for item in args.set or []:
        key, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}.")
        import yaml

        overrides[key] = yaml.safe_load(value)
    if args.resume:
        overrides["resume"] = True
    config = TrainConfig.from_yaml(args.config, overrides) if args.config else TrainConfig.from_dict(overrides)
    export = train(config, progress=not args.quiet)
    return f"Training done; wrote {export} (checkpoints and train_log.jsonl in {config.save_path})."


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
    convert.add_argument("--checkpoint", required=True, help="released .safetensors file, or a diffusers folder")
    convert.add_argument("--output", required=True, help="output folder (or .safetensors file when converting back)")
    convert.add_argument("--base", help="Wan2.2-TI2V-5B diffusers folder or Hub id: also write vae, text encoder, "
                         "tokenizer, scheduler and model_index.json (a complete pipeline folder)")
    convert.add_argument("--transformer-config", help="JSON of UnityVideoTransformer3DModel config keys "
                         "(default: the released 5B config)")
    convert.add_argument("--transformer-only", action="store_true", help="write the transformer folder itself as --output")
    convert.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of the written weights")
    convert.add_argument("--sha256", help="expected SHA-256 of --checkpoint (the released files are checked by default)")
    convert.add_argument("--max-shard-size", default="5GB", help="largest weight file, e.g. 5GB or 500MB")
    convert.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    convert.add_argument("--quiet", action="store_true", help="no progress bars")
    convert.set_defaults(run=_convert)

    trainer = commands.add_parser(
        "train",
        help="LoRA or full fine-tuning (also under `accelerate launch`)",
        description="Fine-tune UnityVideo with the authors' multi-task recipe; settings from a YAML file.",
    )
    trainer.add_argument("--config", help="YAML file of training settings (see TrainConfig)")
    trainer.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    trainer.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in save_path")
    trainer.add_argument("--quiet", action="store_true", help="no progress bars")
    trainer.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        message = args.run(args)
    except (ValueError, TypeError, OSError) as error:
        parser.exit(2, f"unityvideo {args.command}: error: {error}\n")
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
