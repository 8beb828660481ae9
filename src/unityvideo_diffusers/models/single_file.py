"""The authors' single-file checkpoint, read straight into `UnityVideoTransformer3DModel`: `from_single_file`.

The released file is read once, one tensor at a time in file order. Each tensor goes through diffusers' own
loading step (`load_model_dict_into_meta`: the dtype, the modules kept in fp32, a quantizer) into a model built
on the meta device, exactly as `from_pretrained` does with a converted folder, so the two give the same tensors
bit for bit; memory is the finished model plus one tensor, and no folder is written. Every byte of the file
goes through SHA-256 during that same read, and for the published files a mismatch discards the model.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import GGUFQuantizationConfig
from diffusers.models.model_loading_utils import load_model_dict_into_meta
from diffusers.models.modeling_utils import no_init_weights
from diffusers.quantizers import DiffusersAutoQuantizer
from huggingface_hub import hf_hub_download
from tqdm.auto import tqdm

from ..modalities import RELEASED_MODALITIES
from .keymap import diffusers_to_released_key, modalities_in_released_keys, released_to_diffusers_key
from .quantization import keep_unquantized
from .safetensors_stream import (
    CheckpointError,
    TensorInfo,
    iter_tensors_hashed,
    read_bytes,
    read_header,
    sha256_of,
)


GGUF_ARCHITECTURE = "unityvideo"
GGUF_CONFIG_KEY = "unityvideo.config"  # the transformer config, as JSON
RELEASED_CHECKSUMS = {
    "unityvideo_wan22_ti2v_5b_step15000_ema.safetensors": "0df3909e312526c46f68097958afa055868f73354fe4276d693f7ebc398e6a39",
    "unityvideo_wan22_ti2v_5b_step15000.safetensors": "4ee83a43ffdbaee90e7ff6a25fe108d8d65d255cd0803e3972bbbfb5b01db48c",
}
_HUB_PREFIXES = ("https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")


def expected_sha256(path: Path, expected: str | None) -> str | None:
    """The SHA-256 `path` must have: `expected` (checked for form), else the published one of a released file name."""
    expected = expected or RELEASED_CHECKSUMS.get(path.name)
    if expected is None:
        return None
    expected = expected.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise CheckpointError(f"--sha256 must be 64 hexadecimal characters, got {expected!r}.")
    return expected


def check_sha256(path: Path, expected: str, actual: str) -> None:
    if actual != expected:
        raise CheckpointError(f"SHA-256 mismatch for {path}: expected {expected}, got {actual}.")


def verify_checksum(path: Path, expected: str | None, progress: bool = True) -> str | None:
    """Check the file's SHA-256 against `expected`, or against the published one when the file name is a release."""
    expected = expected_sha256(path, expected)
    if expected is None:
        return None
    actual = sha256_of(path, progress=progress)
    check_sha256(path, expected, actual)
    return actual


def raise_if_any(unmapped: list[str], mismatched: list[str], missing: list[str], config: dict, hint: str) -> None:
    """One error listing every key with no place in the model, every shape mismatch and every missing key."""
    problems = []
    for title, items in (
        ("keys with no place in the model", unmapped),
        ("shape mismatches", mismatched),
        ("missing keys", missing),
    ):
        if items:
            shown = "\n    ".join(items[:12]) + (f"\n    ... and {len(items) - 12} more" if len(items) > 12 else "")
            problems.append(f"  {len(items)} {title}:\n    {shown}")
    if problems:
        raise CheckpointError(
            "The checkpoint does not fit UnityVideoTransformer3DModel"
            f" (layers={config['num_layers']}, dim={config['num_attention_heads'] * config['attention_head_dim']}):\n"
            + "\n".join(problems)
            + (f"\n  ({hint})" if mismatched else "")
        )


def other_model_message(keys) -> str | None:
    """What another model's checkpoint is, by its key names, when none of them belongs to the released layout."""
    keys = list(keys)
    if any(released_to_diffusers_key(key) is not None for key in keys):
        return None
    if any(released_to_diffusers_key(f"base.{key.removeprefix('model.diffusion_model.')}") for key in keys):
        return (
            "a Wan2.x transformer in the original layout (one stream, no modality modules), not UnityVideo: load it "
            "with diffusers' WanTransformer3DModel.from_single_file, then UnityVideoTransformer3DModel.from_wan"
        )
    if any(key.startswith("blocks.0.attn1.to_q.") for key in keys):
        what = "UnityVideo" if any(key.startswith("control_encoder.") for key in keys) else "Wan"
        return (
            f"the weights of a {what} transformer in diffusers' layout, not the released single file: load the "
            "folder that holds it with from_pretrained"
        )
    return (
        f"not a UnityVideo checkpoint: none of its {len(keys)} tensors ({', '.join(keys[:3])}, ...) is in its layout"
    )


class FromReleasedCheckpointMixin:
    """`from_single_file` and the planning it shares with `unityvideo convert`, for a model in the released layout."""

    @classmethod
    def released_config(cls, checkpoint_keys, overrides: dict | None = None) -> dict:
        """The released 5B config, with the checkpoint's own modalities, updated by `overrides` (model config keys)."""
        signature = inspect.signature(cls.__init__).parameters.values()
        defaults = {p.name: p.default for p in signature if p.name != "self"}
        present = modalities_in_released_keys(checkpoint_keys)
        modalities = [m for m in RELEASED_MODALITIES if m in present] + [
            m for m in present if m not in RELEASED_MODALITIES
        ]
        config = {**defaults, "modalities": modalities}
        overrides = {key: value for key, value in (overrides or {}).items() if not key.startswith("_")}
        if "architecture" in overrides:
            raise CheckpointError(
                "That is the authors' config.json, not a transformer config. The released 5B config is the default: "
                "leave --transformer-config out, or give a JSON of UnityVideoTransformer3DModel config keys."
            )
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise CheckpointError(f"Unknown transformer config keys {unknown}; valid keys: {sorted(defaults)}.")
        config.update(overrides)
        return config

    @classmethod
    def expected_parameters(cls, config: dict) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor a model of `config` stores, computed on the meta device (no allocation)."""
        with torch.device("meta"):
            model = cls(**config)
        return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}

    @classmethod
    def plan_released_load(
        cls, source: dict[str, TensorInfo], config: dict, hint: str = "a model of another size needs its config"
    ) -> dict[str, str]:
        """diffusers name -> released name for every tensor; raises naming every key or shape that does not fit."""
        foreign = other_model_message(source)
        if foreign is not None:
            raise CheckpointError(f"This checkpoint is {foreign}.")
        expected = cls.expected_parameters(config)
        plan, unmapped, mismatched = {}, [], []
        for released_name, info in source.items():
            name = released_to_diffusers_key(released_name)
            if name is None or name not in expected:
                unmapped.append(released_name)
                continue
            plan[name] = released_name
            if tuple(info.shape) != expected[name]:
                mismatched.append(f"{released_name} {tuple(info.shape)} -> {name} expects {expected[name]}")
        missing = [diffusers_to_released_key(name) or name for name in expected if name not in plan]
        raise_if_any(unmapped, mismatched, missing, config, hint)
        return {name: plan[name] for name in expected}

    @classmethod
    def from_single_file(
        cls,
        path_or_url: str | os.PathLike,
        config: str | os.PathLike | None = None,
        *,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        quantization_config=None,
        sha256: str | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        **hub_kwargs,
    ):
        r"""
        Load the authors' released checkpoint (one `.safetensors` file in their layout, e.g.
        `unityvideo_wan22_ti2v_5b_step15000_ema.safetensors`) with no conversion step and no intermediate folder.

        Args:
            path_or_url (`str` or `os.PathLike`): a local file, or its Hub address
                (`https://huggingface.co/KlingTeam/UnityVideo/blob/main/checkpoints/..._ema.safetensors`).
            config (`str`, *optional*): as in diffusers, a folder or Hub repo holding the transformer's
                `config.json` (directly, in `subfolder`, or in `transformer/`), for models other than the released
                5B one. `None` is the released 5B config with the modalities the file holds.
            torch_dtype (`torch.dtype`, *optional*): as in `from_pretrained` (the fp32-kept modules stay fp32).
            quantization_config (*optional*): a diffusers quantization config (`TorchAoConfig`,
                `BitsAndBytesConfig`, ...), applied tensor by tensor while loading. A `.gguf` file (written by
                `unityvideo convert --to gguf`) loads with `GGUFQuantizationConfig` (the default for one).
            sha256 (`str`, *optional*): the file's expected SHA-256. The published files are checked against their
                published checksums by default, during the one read that loads them.
            device (*optional*): where the weights go (default CPU).
            hub_kwargs: passed to `hf_hub_download` (`revision`, `token`, `cache_dir`, ...) for a Hub address.
        """
        path = _resolve_file(path_or_url, hub_kwargs)
        quantization_config = keep_unquantized(quantization_config)
        if path.suffix == ".gguf":
            return _from_gguf(cls, path, config, subfolder, torch_dtype, quantization_config, device, hub_kwargs)
        header = read_header(path)
        config_dict = cls.released_config(header.tensors, _load_config(cls, config, subfolder, hub_kwargs))
        plan = cls.plan_released_load(header.tensors, config_dict, hint="a model of another size needs config=")
        names = {released: name for name, released in plan.items()}
        expected = expected_sha256(path, sha256)

        hf_quantizer, torch_dtype = _quantizer(quantization_config, torch_dtype, pre_quantized=False)
        model, keep_in_fp32 = _empty_model(cls, config_dict, torch_dtype, hf_quantizer)
        digest = hashlib.sha256()
        total = sum(info.nbytes for info in header.tensors.values())
        device_map = _device_map(device)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"loading {path.name}", disable=not progress) as bar:
            for released_name, tensor in iter_tensors_hashed(header, digest):
                load_model_dict_into_meta(
                    model,
                    {names[released_name]: tensor},
                    dtype=torch_dtype,
                    model_name_or_path=str(path),
                    hf_quantizer=hf_quantizer,
                    keep_in_fp32_modules=keep_in_fp32,
                    device_map=device_map,
                    unexpected_keys=[],
                )
                bar.update(tensor.nbytes)
        if expected is not None:
            check_sha256(path, expected, digest.hexdigest())
        return _finish(model, hf_quantizer, torch_dtype, str(path))


def _device_map(device) -> dict:
    return {"": torch.device(device) if device is not None else torch.device("cpu")}


def gguf_architecture(reader) -> str | None:
    """The `general.architecture` of an open `gguf.GGUFReader`."""
    field = reader.fields.get("general.architecture")
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


def _from_gguf(cls, path: Path, config, subfolder, torch_dtype, quantization_config, device, hub_kwargs):
    """
    A GGUF file in the released layout: its quantized tensors become diffusers' `GGUFParameter`s (dequantized on
    the fly in each forward), the others load as usual. Tensors are read one at a time with positioned reads, so
    memory is the quantized model, not the file's memory map on top of it.
    """
    from diffusers.quantizers.gguf.utils import GGUFParameter  # needs the optional gguf package
    from gguf import GGMLQuantizationType, GGUFReader, quant_shape_to_byte_shape

    reader = GGUFReader(path)
    architecture = gguf_architecture(reader)
    if architecture != GGUF_ARCHITECTURE:
        raise CheckpointError(
            f"{path} is a GGUF file of architecture {architecture!r}, not UnityVideo ({GGUF_ARCHITECTURE!r}): "
            "write one with `unityvideo convert --to gguf`."
        )
    stored = reader.fields.get(GGUF_CONFIG_KEY)
    overrides = json.loads(bytes(stored.parts[stored.data[0]]).decode()) if stored is not None else {}
    overrides.update(_load_config(cls, config, subfolder, hub_kwargs) or {})
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    shapes = {name: tuple(int(size) for size in reversed(t.shape.tolist())) for name, t in tensors.items()}
    config_dict = cls.released_config(tensors, overrides)
    plan = cls.plan_released_load(
        {name: TensorInfo(torch.uint8, shape, 0, 0) for name, shape in shapes.items()}, config_dict, "config="
    )

    state = {}
    with open(path, "rb") as file:
        for name, released in plan.items():
            tensor = tensors[released]
            data = torch.frombuffer(read_bytes(file, tensor.data_offset, int(tensor.n_bytes)), dtype=torch.uint8)
            if tensor.tensor_type == GGMLQuantizationType.F32:
                state[name] = data.view(torch.float32).reshape(shapes[released])
            else:
                byte_shape = quant_shape_to_byte_shape(shapes[released], tensor.tensor_type)
                state[name] = GGUFParameter(data.reshape(byte_shape), quant_type=tensor.tensor_type)
    del reader

    compute_dtype = torch_dtype or torch.bfloat16
    hf_quantizer, torch_dtype = _quantizer(
        quantization_config or keep_unquantized(GGUFQuantizationConfig(compute_dtype=compute_dtype)),
        torch_dtype,
        pre_quantized=True,
    )
    model, keep_in_fp32 = _empty_model(cls, config_dict, torch_dtype, hf_quantizer, state)
    load_model_dict_into_meta(
        model,
        state,
        dtype=torch_dtype,
        model_name_or_path=str(path),
        hf_quantizer=hf_quantizer,
        keep_in_fp32_modules=keep_in_fp32,
        device_map=_device_map(device),
        unexpected_keys=[],
    )
    return _finish(model, hf_quantizer, torch_dtype, str(path))


def _resolve_file(path_or_url: str | os.PathLike, hub_kwargs: dict) -> Path:
    """A local file, or a Hub file address fetched into the Hub cache."""
    text = str(path_or_url)
    if Path(text).exists() or not text.startswith(_HUB_PREFIXES):
        return Path(text)

    for prefix in _HUB_PREFIXES:
        text = text.removeprefix(prefix)
    owner, name, *rest = text.split("/")
    if rest[:2] in (["blob", "main"], ["resolve", "main"]):
        rest = rest[2:]
    if not rest:
        raise CheckpointError(f"{path_or_url} names a repository, not a file in it.")
    return Path(hf_hub_download(f"{owner}/{name}", "/".join(rest), **hub_kwargs))


def _load_config(cls, config, subfolder: str | None, hub_kwargs: dict) -> dict | None:
    """diffusers' convention: a folder or repo with the transformer's config.json, at its top or in `transformer/`."""
    if config is None:
        return None
    if subfolder is None and Path(config, "transformer", "config.json").is_file():
        subfolder = "transformer"
    loaded = cls.load_config(str(config), subfolder=subfolder, **hub_kwargs)
    if loaded.get("_class_name", cls.__name__) != cls.__name__:
        raise CheckpointError(f"config {config} is a {loaded['_class_name']} config, not a {cls.__name__} one.")
    return loaded


def _quantizer(quantization_config, torch_dtype: torch.dtype | None, pre_quantized: bool):
    """diffusers' quantizer for `quantization_config` (None without one) and the dtype it loads the rest in.
    `pre_quantized`: the file holds quantized tensors (GGUF); otherwise the quantizer quantizes each weight as it loads
    (diffusers' quantizers assume pre-quantized unless told, and would then load the weights as they are)."""
    if quantization_config is None:
        return None, torch_dtype
    hf_quantizer = DiffusersAutoQuantizer.from_config(quantization_config, pre_quantized=pre_quantized)
    hf_quantizer.validate_environment(torch_dtype=torch_dtype, device_map=None)
    return hf_quantizer, hf_quantizer.update_torch_dtype(torch_dtype)


def _empty_model(cls, config: dict, torch_dtype: torch.dtype | None, hf_quantizer, state_dict: dict | None = None):
    """The model on the meta device as `from_pretrained` builds it, and the modules kept in fp32. A GGUF quantizer
    needs the (quantized) `state_dict` to know which layers to replace."""
    use_keep_in_fp32 = cls._keep_in_fp32_modules is not None and (
        hf_quantizer is None or getattr(hf_quantizer, "use_keep_in_fp32_modules", False)
    )
    keep_in_fp32 = list(cls._keep_in_fp32_modules) if use_keep_in_fp32 else []
    default_dtype = cls._set_default_torch_dtype(torch_dtype) if torch_dtype is not None else None
    try:
        with no_init_weights(), init_empty_weights():
            model = cls.from_config(config)
    finally:
        if default_dtype is not None:
            torch.set_default_dtype(default_dtype)
    if hf_quantizer is not None:
        hf_quantizer.preprocess_model(
            model=model, device_map=None, keep_in_fp32_modules=keep_in_fp32, state_dict=state_dict
        )
    return model, keep_in_fp32


def _finish(model, hf_quantizer, torch_dtype: torch.dtype | None, name: str):
    if hf_quantizer is not None:
        hf_quantizer.postprocess_model(model)
        model.hf_quantizer = hf_quantizer
        model.register_to_config(_name_or_path=name, _pre_quantization_dtype=torch_dtype)
    else:
        model.register_to_config(_name_or_path=name)
    return model.eval()
