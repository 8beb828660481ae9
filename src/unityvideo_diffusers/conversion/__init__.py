from ..models.keymap import KEY_TEMPLATES, diffusers_to_released_key, released_to_diffusers_key
from ..models.safetensors_stream import (
    CheckpointError,
    SafetensorsReader,
    read_header,
    sha256_of,
    write_safetensors,
)
from ..models.single_file import RELEASED_CHECKSUMS
from .convert import (
    convert_diffusers_to_released,
    convert_released_to_diffusers,
    expected_parameters,
    transformer_config,
)


__all__ = [
    "KEY_TEMPLATES",
    "RELEASED_CHECKSUMS",
    "CheckpointError",
    "SafetensorsReader",
    "convert_diffusers_to_released",
    "convert_released_to_diffusers",
    "diffusers_to_released_key",
    "expected_parameters",
    "read_header",
    "released_to_diffusers_key",
    "sha256_of",
    "transformer_config",
    "write_safetensors",
]
