"""Reading and writing safetensors files one tensor at a time.

The `safetensors` library reads through a memory map and writes whole dicts, so converting a 10 GB
checkpoint with it keeps the file's pages (or the whole dict) resident. Converting tensor by tensor needs
only the two halves of the format that it does not expose separately: the header, and a writer that is
given the tensors lazily. Both follow the format spec (8-byte little-endian header length, JSON header
with dtype / shape / data_offsets per tensor, then the raw little-endian data).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not hold what it should."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and check a safetensors header: known dtypes, sizes that match shapes, data inside the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file.")
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {file_size} bytes).")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(_MAX_HEADER_BYTES, file_size - 8):
            raise CheckpointError(f"{path} is not a safetensors file (implausible header length {header_size}).")
        try:
            raw = json.loads(file.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header: {error}).") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a JSON object).")

    data_start = 8 + header_size
    metadata = raw.pop("__metadata__", None) or {}
    tensors = {}
    for name, entry in raw.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(size) for size in entry["shape"])
            begin, end = (int(offset) for offset in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed or unsupported header entry for {name!r}: {entry}") from None
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: {name!r} has {end - begin} bytes for shape {shape} of {entry['dtype']}.")
        tensors[name] = TensorInfo(dtype, shape, data_start + begin, data_start + end)
    data_end = max((info.end for info in tensors.values()), default=data_start)
    if data_end > file_size:
        raise CheckpointError(
            f"{path} is truncated: its header describes {data_end} bytes but the file has {file_size}."
        )
    return SafetensorsHeader(path=path, tensors=tensors, metadata=metadata)


def read_bytes(file, start: int, count: int) -> bytearray:
    """`count` bytes at `start`, with plain positioned reads (no memory map), so memory stays at what is read."""
    data = bytearray(count)
    view = memoryview(data)
    read = 0
    while read < count:
        got = os.preadv(file.fileno(), [view[read:]], start + read)
        if got == 0:
            raise CheckpointError(f"Unexpected end of file {file.name} at byte {start + read}.")
        read += got
    return data


def _as_tensor(data: bytearray, info: TensorInfo) -> torch.Tensor:
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    return torch.frombuffer(data, dtype=info.dtype).reshape(info.shape)


def read_tensor(file, info: TensorInfo) -> torch.Tensor:
    """Read one tensor, so memory stays at one tensor."""
    return _as_tensor(read_bytes(file, info.start, info.nbytes), info)


def iter_tensors_hashed(header: SafetensorsHeader, digest) -> Iterator[tuple[str, torch.Tensor]]:
    """
    Every tensor of one file, in file order, one at a time; every byte of the file (header, padding, data, tail)
    is fed to `digest` (a `hashlib` object) on the way, so the file's checksum comes out of the one read that
    loads it. The checksum is complete only once the iteration has finished.
    """
    file_size = header.path.stat().st_size
    position = 0
    with open(header.path, "rb") as file:
        for name, info in sorted(header.tensors.items(), key=lambda item: item[1].start):
            if info.start < position:
                raise CheckpointError(f"{header.path}: tensor {name!r} overlaps the tensor before it.")
            digest.update(read_bytes(file, position, info.start - position))
            data = read_bytes(file, info.start, info.nbytes)
            digest.update(data)
            position = info.end
            yield name, _as_tensor(data, info)
        while position < file_size:
            chunk = read_bytes(file, position, min(16 * 1024 * 1024, file_size - position))
            digest.update(chunk)
            position += len(chunk)


def write_safetensors(
    path: str | os.PathLike,
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[int], None] | None = None,
) -> None:
    """
    Write a safetensors file whose tensors are known up front by dtype and shape and produced one at a time by
    `produce(name)`, in the order of `specs`. Written to a temporary name and renamed at the end, so `path`
    either holds a complete file or does not exist.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, (dtype, shape) in specs.items():
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)

    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with open(temporary, "wb") as file:
            file.write(struct.pack("<Q", len(header_bytes)))
            file.write(header_bytes)
            for name, (dtype, shape) in specs.items():
                tensor = produce(name)
                if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                    raise CheckpointError(
                        f"{name}: produced {tensor.dtype} {tuple(tensor.shape)}, announced {dtype} {tuple(shape)}."
                    )
                data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                file.write(memoryview(data))
                if on_tensor is not None:
                    on_tensor(data.nbytes)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def sha256_of(path: str | os.PathLike, progress: bool = True) -> str:
    path = Path(path)
    digest = hashlib.sha256()
    with (
        open(path, "rb") as file,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress
        ) as bar,
    ):
        while chunk := file.read(16 * 1024 * 1024):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


class SafetensorsReader:
    """Tensors of one or more safetensors files (the shards of one model), read one at a time on demand."""

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike]):
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.headers = [read_header(path) for path in paths]
        self.tensors: dict[str, TensorInfo] = {}
        self._owner: dict[str, int] = {}
        for index, header in enumerate(self.headers):
            for name, info in header.tensors.items():
                if name in self.tensors:
                    raise CheckpointError(
                        f"Tensor {name!r} appears in both {paths[self._owner[name]]} and {paths[index]}."
                    )
                self.tensors[name] = info
                self._owner[name] = index
        self._files: list | None = None

    def __enter__(self) -> SafetensorsReader:
        self._files = [open(header.path, "rb") for header in self.headers]
        return self

    def __exit__(self, *exc) -> None:
        for file in self._files or []:
            file.close()
        self._files = None

    def read(self, name: str) -> torch.Tensor:
        if self._files is None:
            raise RuntimeError("Use SafetensorsReader as a context manager to read tensors.")
        return read_tensor(self._files[self._owner[name]], self.tensors[name])
