"""Released checkpoint -> a GGUF file (`unityvideo convert --to gguf --quant Q8_0`), for diffusers' GGUF loader.

Written with the `gguf` package (llama.cpp's own writer), streamed: the tensor table is announced first, then
each tensor is read, quantized and written in turn, so memory stays at one tensor. The file keeps the released
key names, records its architecture (`unityvideo`) and its transformer config, and quantizes the linear layers'
weights except those that stay in higher precision by default (`models/quantization.py`); every other tensor is
stored as F32 (exact for the bf16 release). `UnityVideoTransformer3DModel.from_single_file("x.gguf")` loads it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models import UnityVideoTransformer3DModel
from ..models.quantization import UNQUANTIZED_MODULES
from ..models.safetensors_stream import CheckpointError, SafetensorsReader
from ..models.single_file import GGUF_ARCHITECTURE, GGUF_CONFIG_KEY, verify_checksum
from .convert import _atomic_output, plan_released_to_diffusers, transformer_config


# the types the `gguf` package can write (its K-quants only read) and diffusers can load
GGUF_QUANT_TYPES = ("Q8_0", "Q5_0", "Q4_1", "Q4_0")


def quantized_weights(config: dict) -> set[str]:
    """diffusers names of the weights to quantize: linear layers outside the modules kept in higher precision."""
    with torch.device("meta"):
        model = UnityVideoTransformer3DModel(**config)
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not set(name.split(".")) & set(UNQUANTIZED_MODULES)
    }


def convert_released_to_gguf(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    quant: str = "Q8_0",
    transformer_config_overrides: dict | None = None,
    sha256: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the released checkpoint as one GGUF file with `quant` weights. Returns the output path."""
    checkpoint, output = Path(checkpoint), Path(output)
    if quant not in GGUF_QUANT_TYPES:
        raise CheckpointError(f"--quant must be one of {', '.join(GGUF_QUANT_TYPES)}, got {quant!r}.")
    if output.suffix != ".gguf":
        raise CheckpointError(f"--to gguf writes one .gguf file; got --output {output}.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; choose another --output or pass --overwrite.")
    try:
        import gguf
    except ImportError:
        raise CheckpointError("--to gguf needs the gguf package: pip install gguf") from None

    reader = SafetensorsReader(checkpoint)
    verify_checksum(checkpoint, sha256, progress)
    config = transformer_config(reader.tensors, transformer_config_overrides)
    plan = plan_released_to_diffusers(reader.tensors, config)
    qtype = gguf.GGMLQuantizationType[quant]
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    quantize = {
        name
        for name in quantized_weights(config)
        if reader.tensors[plan[name]].shape[-1] % block_size == 0  # rows must hold whole blocks
    }

    with _atomic_output(output, overwrite, is_dir=False) as staging:
        writer = gguf.GGUFWriter(staging, arch=GGUF_ARCHITECTURE)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string(GGUF_CONFIG_KEY, json.dumps(config))
        for name, released in plan.items():
            shape = reader.tensors[released].shape
            if name in quantize:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
                writer.add_tensor_info(released, byte_shape, np.uint8, math.prod(byte_shape), qtype)
            else:
                writer.add_tensor_info(released, shape, np.float32, 4 * math.prod(shape))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with reader, tqdm(total=len(plan), desc=f"writing {quant} GGUF", disable=not progress) as bar:
            for name, released in plan.items():
                values = reader.read(released).float().numpy()
                writer.write_tensor_data(gguf.quants.quantize(values, qtype) if name in quantize else values)
                bar.update()
        writer.close()
    return output
