"""Memory at the released size, on CPU: CPU RAM (peak RSS) stands in for GPU memory.

    python benchmarks/memory_5b.py --workdir /big/disk                  # every row
    python benchmarks/memory_5b.py --workdir /big/disk --rows bf16 int8  # some rows
    python benchmarks/memory_5b.py --rows vae-121x704x1280 vae-121x704x1280-tiled --count   # counted, seconds

The transformer is the released 5B config (5.01 B parameters) with random weights, written once in the released
layout (`single_file_memory.write_random_release`, 10.02 GB) and loaded with `from_single_file`; the GGUF rows
convert that file first (`unityvideo convert --to gguf`). Each row runs in its own process, so peaks do not mix, and
reports two peaks read from the kernel (VmHWM): while loading, and while running one forward at 33 x 256 x 256
(latents 9 x 16 x 16 per stream, 1152 joint tokens, a 512-token text, bf16 compute) after the peak was reset.
`--blocks 2` runs that forward through the first 2 of the 30 blocks, with all 30 loaded: the blocks have the same
shapes and run one after another, so the peak is reached within any of them, at a fifteenth of the time (the bf16
row, measured both ways, shows how close the two are).
"Group offload" keeps the weights on disk (`offload_to_disk_path`) and brings one block at a time into RAM: on a
GPU the same hooks keep them in CPU RAM and bring one block at a time into GPU memory.
The VAE rows decode latents with the Wan2.2 VAE's config (random weights, fp32, as diffusers' Wan pipelines run it).

`--count` runs the VAE rows on fake tensors (shapes only, no arithmetic) and counts the bytes of the tensors alive at
each moment: the peak of that count is the memory the decode's tensors need, without the process around them or the
allocator's slack. A real decode at 121 x 704 x 1280 takes hours on a few CPU cores; counting it takes minutes. The
5-frame rows are there to compare the count with the measured peak, on both code paths (tiles of 128 make tiling
engage at 256 x 256; at diffusers' default tiles of 256 it does not, so the two 33 x 256 x 256 rows are the same).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


TRANSFORMER_ROWS = {
    "bf16": "bf16 weights",
    "fp8": "fp8 storage (float8_e4m3fn), bf16 compute",
    "int8": "torchao int8 weight-only",
    "gguf-q8_0": "GGUF Q8_0",
    "gguf-q4_0": "GGUF Q4_0",
    "group": "bf16, group offload (block level, 1 block per group)",
}
# name: (frames, height, width, tile size or None); tiles overlap by a quarter, as diffusers' default 256 / 192
VAE_ROWS = {
    "vae-5x256x256": (5, 256, 256, None),
    "vae-5x256x256-tiled128": (5, 256, 256, 128),
    "vae-33x256x256": (33, 256, 256, None),
    "vae-33x256x256-tiled": (33, 256, 256, 256),
    "vae-121x704x1280": (121, 704, 1280, None),
    "vae-121x704x1280-tiled": (121, 704, 1280, 256),
}
WAN22_VAE = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
)

# the child process: one row, its peaks printed as JSON on the last line
CHILD = r'''
import ctypes, json, sys, time, torch
row, first, second, blocks = sys.argv[1:5]  # VAE rows: frames/height/width/tile/counted and the VAE config (JSON);
# else: the checkpoint, the offload folder and how many blocks the forward runs (0: all)


def hwm():
    """Peak RSS (bytes) since the process started or since reset_peak()."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


def reset_peak():
    """Hand the heap's free memory back to the system first (glibc keeps what loading freed), then restart VmHWM
    from the resident memory."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    open("/proc/self/clear_refs", "w").write("5")


result = {}
start = time.perf_counter()
if row.startswith("vae"):
    import contextlib, weakref
    from diffusers import AutoencoderKLWan
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.weak import WeakIdKeyDictionary

    class LiveBytes(TorchDispatchMode):
        """Bytes of the tensor storages alive, and their peak: each storage counted once, from the op that made it
        until it is freed."""

        def __init__(self):
            super().__init__()
            self.counted, self.live, self.peak = WeakIdKeyDictionary(), 0, 0

        def count(self, tensor):
            storage = tensor.untyped_storage()
            if storage not in self.counted:
                self.counted[storage] = size = storage.nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self.free, size)

        def free(self, size):
            self.live -= size

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self.count(leaf)
            return out

    frames, height, width, tile, counted = json.loads(first)
    with FakeTensorMode() if counted else contextlib.nullcontext():
        vae = AutoencoderKLWan(**json.loads(second)).eval()
        if tile:
            vae.enable_tiling(tile, tile, tile * 3 // 4, tile * 3 // 4)
        latents = torch.randn(1, 48, (frames - 1) // 4 + 1, height // 16, width // 16)
        counter = LiveBytes()
        for tensor in (*vae.parameters(), *vae.buffers(), latents):
            counter.count(tensor)
        result["load"] = counter.live if counted else hwm()
        reset_peak()
        with counter if counted else contextlib.nullcontext(), torch.no_grad():
            video = vae.decode(latents).sample
    result["shape"] = list(video.shape)
    if counted:
        result["run"] = counter.peak
else:
    from unityvideo_diffusers import UnityVideoTransformer3DModel
    kwargs = {}
    if row == "int8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig
        kwargs["quantization_config"] = TorchAoConfig(Int8WeightOnlyConfig())
    model = UnityVideoTransformer3DModel.from_single_file(first, torch_dtype=torch.bfloat16, progress=False, **kwargs)
    if row == "fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    if row == "group":
        model.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1,
                                   offload_to_disk_path=second)
    result["load"] = hwm()
    result["load_seconds"] = time.perf_counter() - start
    all_blocks = model.blocks  # held: every weight stays loaded, only the forward is shorter
    if int(blocks):
        model.blocks = all_blocks[: int(blocks)]
    generator = torch.Generator().manual_seed(0)
    latents = lambda: torch.randn(1, 48, 9, 16, 16, generator=generator).bfloat16()
    inputs = dict(hidden_states=latents(), modality_hidden_states=latents(), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 512, 4096, generator=generator).bfloat16(), modality="depth")
    reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        out = model(**inputs)
    result["finite"] = bool(torch.isfinite(out.sample).all() and torch.isfinite(out.modality_sample).all())
result.setdefault("run", hwm())
result["run_seconds"] = time.perf_counter() - start
print(json.dumps(result))
'''


def run_row(row: str, checkpoint: Path, workdir: Path, count: bool = False, blocks: int = 0) -> dict:
    """One row in a fresh process; a failure (e.g. out of memory) is reported, not raised."""
    if row in VAE_ROWS:
        args = [json.dumps([*VAE_ROWS[row], count]), json.dumps(WAN22_VAE)]
    else:
        source = (
            checkpoint.with_name(f"{checkpoint.stem}-{row[5:].upper()}.gguf") if row.startswith("gguf") else checkpoint
        )
        args = [str(source), str(workdir / f"offload-{row}")]
    args.append(str(blocks))
    result = subprocess.run([sys.executable, "-c", CHILD, row, *args], capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def prepare(rows: list[str], checkpoint: Path) -> None:
    """The random 5B release (and its GGUF conversions) the transformer rows load, written once."""
    from single_file_memory import write_random_release

    if any(row in TRANSFORMER_ROWS for row in rows) and not checkpoint.exists():
        write_random_release(checkpoint)
    for row in rows:
        if row.startswith("gguf"):
            quant = row[5:].upper()
            target = checkpoint.with_name(f"{checkpoint.stem}-{quant}.gguf")
            if not target.exists():
                command = ["convert", "--checkpoint", checkpoint, "--to", "gguf", "--quant", quant, "--output", target]
                subprocess.run(
                    [sys.executable, "-m", "unityvideo_diffusers", *map(str, command), "--quiet"], check=True
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="a folder with ~25 GB free (default: a temporary folder)")
    parser.add_argument(
        "--rows", nargs="+", choices=[*TRANSFORMER_ROWS, *VAE_ROWS], default=[*TRANSFORMER_ROWS, *VAE_ROWS]
    )
    parser.add_argument("--keep", action="store_true", help="keep the random checkpoints in --workdir for later runs")
    parser.add_argument("--count", action="store_true", help="VAE rows: count live tensor bytes on fake tensors")
    parser.add_argument(
        "--blocks",
        type=int,
        default=0,
        help="transformer rows: run the forward through the first N blocks only (0: all)",
    )
    args = parser.parse_args()

    folder = Path(args.workdir or tempfile.mkdtemp())
    checkpoint = folder / "random_5b_released_layout.safetensors"
    prepare(args.rows, checkpoint)
    print(f"{'row':<26}{'load peak GiB':>15}{'forward/decode peak GiB':>25}{'seconds':>9}  what")
    for row in args.rows:
        started = time.perf_counter()
        result = run_row(row, checkpoint, folder, args.count, args.blocks)
        what = TRANSFORMER_ROWS.get(row) or "VAE decode {}x{}x{}{}".format(
            *VAE_ROWS[row][:3], f", tiles of {VAE_ROWS[row][3]}" if VAE_ROWS[row][3] else ""
        ) + (" (counted on fake tensors)" if args.count and row in VAE_ROWS else "")
        if "error" in result:
            print(f"{row:<26}{'-':>15}{'-':>25}{time.perf_counter() - started:>9.0f}  {what}: {result['error']}")
            continue
        print(
            f"{row:<26}{result['load'] / 2**30:>15.2f}{result['run'] / 2**30:>25.2f}"
            f"{time.perf_counter() - started:>9.0f}  {what}",
            flush=True,
        )
    if not args.keep:
        for path in folder.glob("random_5b_released_layout*"):
            path.unlink()


if __name__ == "__main__":
    main()
