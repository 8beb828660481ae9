"""`--quantize` and `--offload`: how the command line and the demo load a pipeline into less memory.

Everything is checked before any weight is read (a backend package that is missing is named, with the command that
installs it), and each option is diffusers' own machinery: a quantization config or a GGUF transformer given to
`from_pretrained`, fp8 weight storage by layerwise casting, and the pipeline's offload methods.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from diffusers import BitsAndBytesConfig, PipelineQuantizationConfig, TorchAoConfig

from .models import UnityVideoTransformer3DModel


QUANTIZE_SCHEMES = {
    "int8": "torchao int8 weight-only",
    "fp8": "float8_e4m3fn weight storage, computing in --dtype",
    "nf4": "bitsandbytes NF4 (needs a GPU)",
}
OFFLOAD_MODES = {
    "model": "one model on the device at a time",
    "group": "the transformer's blocks moved to the device one at a time",
    "sequential": "every layer moved to the device when it runs (least memory, slowest)",
}
_PACKAGES = {"int8": "torchao", "nf4": "bitsandbytes", "gguf": "gguf"}


def check_low_memory(quantize: str | None, offload: str | None, device: str) -> None:
    """Refuse an unknown scheme or mode, a missing GGUF file, a missing backend package, or NF4 without a GPU."""
    if offload is not None and offload not in OFFLOAD_MODES:
        raise ValueError(f"Unknown --offload {offload!r}; choose one of {', '.join(OFFLOAD_MODES)}.")
    if offload == "sequential" and device == "cpu":
        # accelerate's per-layer hooks fail in the UMT5 text encoder when the CPU is also the execution device
        raise ValueError(
            "--offload sequential moves each layer to an accelerator (--device cuda ...); on CPU use model."
        )
    if quantize is None:
        return
    is_gguf = quantize.endswith(".gguf")
    if is_gguf and offload == "sequential":
        raise ValueError(
            "--offload sequential cannot move GGUF weights (accelerate rebuilds them without their GGUF type); "
            "use --offload group or model."
        )
    if not is_gguf and quantize not in QUANTIZE_SCHEMES:
        raise ValueError(
            f"Unknown --quantize {quantize!r}; choose one of {', '.join(QUANTIZE_SCHEMES)}, or a .gguf file "
            "(unityvideo convert --to gguf)."
        )
    if is_gguf and not Path(quantize).is_file():
        raise FileNotFoundError(f"--quantize {quantize} does not exist.")
    if quantize == "nf4" and not device.startswith(("cuda", "xpu")):
        raise ValueError("--quantize nf4 runs on a GPU (diffusers' bitsandbytes quantizer); on CPU use int8 or fp8.")
    package = _PACKAGES.get("gguf" if is_gguf else quantize)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ValueError(f"--quantize {quantize} needs the {package} package: pip install {package}")


def loading_kwargs(quantize: str | None, dtype: torch.dtype) -> dict:
    """What `from_pretrained` gets for `quantize`: a quantization config for the transformer, or the GGUF one."""

    if quantize == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        config = TorchAoConfig(Int8WeightOnlyConfig())
    elif quantize == "nf4":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    elif quantize is not None and quantize.endswith(".gguf"):
        return {"transformer": UnityVideoTransformer3DModel.from_single_file(quantize, torch_dtype=dtype)}
    else:  # none, or fp8 storage (applied after loading)
        return {}
    return {"quantization_config": PipelineQuantizationConfig(quant_mapping={"transformer": config})}


def place(pipe, quantize: str | None, offload: str | None, device: str, dtype: torch.dtype) -> None:
    """fp8 weight storage, then the offload mode (or the whole pipeline on `device`)."""
    if quantize == "fp8":
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(torch.device(device), offload_type="block_level", num_blocks_per_group=1)
    else:
        pipe.to(device)
