"""Released UnityVideo checkpoint <-> diffusers folder.

Both directions plan everything first (keys mapped, shapes checked, checksum verified, base components
found) and only then write, tensor by tensor, into a temporary location that is renamed into place at the
end: a conversion either completes or leaves nothing behind, and its memory is one tensor at a time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import __version__ as diffusers_version
from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
from huggingface_hub import snapshot_download, split_state_dict_into_shards_factory
from tqdm.auto import tqdm

from ..models import UnityVideoTransformer3DModel
from ..models.keymap import diffusers_to_released_key
from ..models.safetensors_stream import CheckpointError, SafetensorsReader, TensorInfo, sha256_of, write_safetensors
from ..models.single_file import raise_if_any, verify_checksum
from ..sampling import RELEASED_SAMPLING_DEFAULTS
from ..schedulers import default_scheduler


logger = logging.getLogger(__name__)

BASE_COMPONENTS = ("vae", "text_encoder", "tokenizer")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SIZE_HINT = "a model of another size needs --transformer-config with its config keys"

transformer_config = UnityVideoTransformer3DModel.released_config
expected_parameters = UnityVideoTransformer3DModel.expected_parameters


def plan_released_to_diffusers(source: dict[str, TensorInfo], config: dict) -> dict[str, str]:
    """diffusers name -> released name for every tensor; raises naming every key or shape that does not fit."""
    return UnityVideoTransformer3DModel.plan_released_load(source, config, hint=SIZE_HINT)


@contextmanager
def _atomic_output(output: Path, overwrite: bool, is_dir: bool):
    """Yield a temporary path beside `output`; move it to `output` only if the block completes."""
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; choose another --output or pass --overwrite.")
    output.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        temporary = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        if output.exists():
            displaced = output.with_name(f".{output.name}.replaced")
            os.replace(output, displaced)
            os.replace(temporary, output)
            shutil.rmtree(displaced) if displaced.is_dir() else displaced.unlink()
        else:
            os.replace(temporary, output)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary) if temporary.is_dir() else temporary.unlink()


def _write_weights(
    reader: SafetensorsReader,
    plan: dict[str, str],
    directory: Path,
    dtype: torch.dtype,
    max_shard_size: int | str,
    progress: bool,
) -> None:
    """Write `plan` (new name -> source name) as diffusers' (sharded) safetensors weights into `directory`."""
    specs = {name: (dtype, reader.tensors[source].shape) for name, source in plan.items()}
    split = split_state_dict_into_shards_factory(
        specs,
        get_storage_size=lambda spec: spec[0].itemsize * int(torch.Size(spec[1]).numel()),
        filename_pattern=SAFETENSORS_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"),
        max_shard_size=max_shard_size,
    )
    total = sum(dtype.itemsize * torch.Size(shape).numel() for _, shape in specs.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing transformer", disable=not progress) as bar:
        for filename, names in split.filename_to_tensors.items():
            write_safetensors(
                directory / filename,
                {name: specs[name] for name in names},
                lambda name: reader.read(plan[name]).to(dtype),
                on_tensor=bar.update,
            )
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _resolve_base(base: str) -> Path:
    """A local Wan2.2 diffusers folder, or a Hub repo id fetched (only the parts we take) into the Hub cache."""
    path = Path(base)
    if not path.exists():
        patterns = [f"{component}/*" for component in BASE_COMPONENTS] + ["model_index.json"]
        path = Path(snapshot_download(base, allow_patterns=patterns))
    missing = [component for component in BASE_COMPONENTS if not (path / component).is_dir()]
    if missing or not (path / "model_index.json").is_file():
        raise CheckpointError(
            f"--base {base} is not a Wan2.2 diffusers pipeline folder: it lacks "
            f"{', '.join(missing + ([] if (path / 'model_index.json').is_file() else ['model_index.json']))}."
        )
    return path


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(os.path.realpath(source), destination)
    except OSError:
        shutil.copy2(source, destination)


def _write_pipeline_parts(base: Path, directory: Path) -> None:
    """Take vae, text encoder and tokenizer from the Wan2.2 base, write our default scheduler and model_index.json
    (with the released model's sampling defaults)."""

    base_index = json.loads((base / "model_index.json").read_text())
    index = {"_class_name": "UnityVideoPipeline", "_diffusers_version": diffusers_version}
    for component in BASE_COMPONENTS:
        shutil.copytree(base / component, directory / component, copy_function=_link_or_copy)
        index[component] = base_index[component]
    scheduler = default_scheduler()
    scheduler.save_pretrained(directory / "scheduler")
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    # what diffusers' save_pretrained records for a model outside diffusers and transformers
    index["transformer"] = [UnityVideoTransformer3DModel.__module__, UnityVideoTransformer3DModel.__name__]
    index["sampling_defaults"] = RELEASED_SAMPLING_DEFAULTS  # the released model's size, length, steps, guidance
    (directory / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")


def convert_released_to_diffusers(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    base: str | None = None,
    transformer_config_overrides: dict | None = None,
    transformer_only: bool = False,
    dtype: str = "bf16",
    sha256: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """
    Convert the authors' single-file checkpoint into a diffusers folder.

    `output/transformer/` always (or `output/` itself with `transformer_only`); with `base` (a Wan2.2-TI2V-5B
    diffusers folder or Hub id) also its `vae`, `text_encoder` and `tokenizer`, our default `scheduler` and
    `model_index.json`: a folder `UnityVideoPipeline.from_pretrained` loads.
    Returns the output path.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if transformer_only and base is not None:
        raise CheckpointError("--transformer-only writes the transformer alone; it cannot be combined with --base.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; choose another --output or pass --overwrite.")

    reader = SafetensorsReader(checkpoint)
    verify_checksum(checkpoint, sha256, progress)
    config = transformer_config(reader.tensors, transformer_config_overrides)
    plan = plan_released_to_diffusers(reader.tensors, config)
    base_path = _resolve_base(base) if base is not None else None

    with _atomic_output(output, overwrite, is_dir=True) as staging:
        transformer_dir = staging if transformer_only else staging / "transformer"
        transformer_dir.mkdir(exist_ok=True)
        with torch.device("meta"):
            UnityVideoTransformer3DModel(**config).save_config(transformer_dir)
        with reader:
            _write_weights(reader, plan, transformer_dir, DTYPES[dtype], max_shard_size, progress)
        if base_path is not None:
            _write_pipeline_parts(base_path, staging)
    logger.info("Wrote %s", output)
    return output


def _transformer_folder(folder: Path) -> Path:
    for candidate in (folder / "transformer", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(f"{folder} holds no transformer config.json (looked in {folder}/transformer and {folder}).")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / name for name in names]
    single = folder / SAFETENSORS_WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise CheckpointError(f"{folder} has no {SAFETENSORS_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}.")


def convert_diffusers_to_released(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    dtype: str = "bf16",
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, str]:
    """
    Write a UnityVideo diffusers folder (pipeline or transformer) as one checkpoint in the authors' layout, e.g. to
    run a fine-tune in their code. Returns the output path and its SHA-256.
    """
    folder, output = Path(folder), Path(output)
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if output.suffix != ".safetensors":
        raise CheckpointError(f"The released layout is one .safetensors file; got --output {output}.")
    transformer_dir = _transformer_folder(folder)
    config = json.loads((transformer_dir / "config.json").read_text())
    if config.get("_class_name") != UnityVideoTransformer3DModel.__name__:
        raise CheckpointError(f"{transformer_dir} holds a {config.get('_class_name')}, not a UnityVideo transformer.")
    config = transformer_config([], config)
    if config["modality_adaln"] or config["task_embedding"]:
        raise CheckpointError(
            "This model uses options the authors' code lacks (modality_adaln / task_embedding); "
            "it cannot be written in the released layout."
        )

    reader = SafetensorsReader(_weight_files(transformer_dir))
    expected = expected_parameters(config)
    unmapped = sorted(set(reader.tensors) - set(expected))
    missing = [name for name in expected if name not in reader.tensors]
    mismatched = [
        f"{name} {tuple(reader.tensors[name].shape)} != {shape}"
        for name, shape in expected.items()
        if name in reader.tensors and tuple(reader.tensors[name].shape) != shape
    ]
    no_place = [name for name in expected if diffusers_to_released_key(name) is None]
    raise_if_any(unmapped + no_place, mismatched, missing, config, SIZE_HINT)

    plan = {diffusers_to_released_key(name): name for name in expected}
    with _atomic_output(output, overwrite, is_dir=False) as staging, reader:
        total = sum(DTYPES[dtype].itemsize * torch.Size(reader.tensors[n].shape).numel() for n in plan.values())
        with tqdm(total=total, unit="B", unit_scale=True, desc="writing checkpoint", disable=not progress) as bar:
            write_safetensors(
                staging,
                {name: (DTYPES[dtype], reader.tensors[source].shape) for name, source in plan.items()},
                lambda name: reader.read(plan[name]).to(DTYPES[dtype]),
                on_tensor=bar.update,
            )
    return output, sha256_of(output, progress=progress)
