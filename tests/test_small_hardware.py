"""Small hardware: quantized transformers (torchao, GGUF; bitsandbytes where a GPU is) and fp8 weight storage run the
three jobs close to bf16; group offload (block and leaf level) runs them exactly.

Each scheme runs text -> video + depth, depth -> video and video -> depth on the tiny pipeline (a transformer of
width 64, so that GGUF's 32-wide blocks fit its rows) and its denoised latents are compared with the bf16
pipeline's, same seed. The bounds are about twice what was measured here (stated next to each).
Relative error: the L2 norm of the difference over the L2 norm of the bf16 latents.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import BitsAndBytesConfig, GGUFQuantizationConfig, PipelineQuantizationConfig, TorchAoConfig
from safetensors.torch import save_file

from unityvideo_diffusers import (
    UnityVideoControlPipeline,
    UnityVideoPerceptionPipeline,
    UnityVideoPipeline,
    UnityVideoTransformer3DModel,
)
from unityvideo_diffusers.conversion import CheckpointError, diffusers_to_released_key
from unityvideo_diffusers.conversion.to_gguf import convert_released_to_gguf
from unityvideo_diffusers.models.quantization import UNQUANTIZED_MODULES, keep_unquantized
from unityvideo_diffusers.testing import tiny_pipeline_components


torchao = pytest.importorskip("torchao.quantization")
gguf = pytest.importorskip("gguf")

QUANTIZABLE = {"attention_head_dim": 32, "ffn_dim": 64}  # width 64: rows of whole 32-value GGUF blocks
GPU = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="diffusers' bitsandbytes quantizer refuses to run without a GPU (its validate_environment), although "
    "bitsandbytes' own CPU kernels (0.50) quantize and run int8 and NF4 linear layers",
)
GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="sequential offload needs an accelerator")
SIZE = dict(num_frames=5, height=32, width=32, num_inference_steps=2, output_type="latent")


def relative_error(actual, expected) -> float:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny pipeline folder, its transformer in bf16, and the same transformer as a released-layout file."""
    root = tmp_path_factory.mktemp("quantization")
    components = tiny_pipeline_components(transformer_config=QUANTIZABLE)
    with torch.no_grad():  # values a bf16 file holds exactly, so the folder and the file agree
        for parameter in components["transformer"].parameters():
            parameter.copy_(parameter.bfloat16().float())
    UnityVideoPipeline(**components).save_pretrained(root / "pipeline")
    state = components["transformer"].state_dict()
    released = {diffusers_to_released_key(k): v.bfloat16().contiguous() for k, v in state.items()}
    save_file(released, root / "released.safetensors")
    (root / "config.json").write_text(json.dumps(dict(components["transformer"].config)))
    return root


def run_jobs(transformer_or_quantization: dict, folder, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The three jobs' latents with a pipeline loaded from `folder` plus `transformer=` or `quantization_config=`."""
    pipe = UnityVideoPipeline.from_pretrained(
        folder / "pipeline", torch_dtype=torch.bfloat16, **transformer_or_quantization
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    video = np.random.default_rng(0).random((5, 32, 32, 3))
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    joint = pipe("a red ball", modality="depth", generator=seeded(), **SIZE)
    control = UnityVideoControlPipeline.from_pipe(pipe)(
        "a red ball", control_video=video, modality="depth", generator=seeded(), **SIZE
    )
    perception = UnityVideoPerceptionPipeline.from_pipe(pipe)(
        video=video, modality="depth", generator=seeded(), **SIZE
    )
    return {
        "joint rgb": joint.frames,
        "joint depth": joint.modality_frames,
        "control": control.frames,
        "perception": perception.modality_frames,
    }


@pytest.fixture(scope="module")
def bf16_latents(folder):
    return run_jobs({}, folder)


def pipeline_torchao(quant_type):
    return {
        "quantization_config": PipelineQuantizationConfig(quant_mapping={"transformer": TorchAoConfig(quant_type)})
    }


def gguf_transformer(folder, quant):
    path = folder / f"transformer-{quant}.gguf"
    if not path.exists():
        config = json.loads((folder / "config.json").read_text())
        convert_released_to_gguf(
            folder / "released.safetensors", path, quant=quant, transformer_config_overrides=config, progress=False
        )
    return {"transformer": UnityVideoTransformer3DModel.from_single_file(path, torch_dtype=torch.bfloat16)}


def fp8_storage(folder):
    transformer = UnityVideoTransformer3DModel.from_pretrained(
        folder / "pipeline" / "transformer", torch_dtype=torch.bfloat16
    )
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert transformer.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn
    for kept in (transformer.control_encoder.proj_in, transformer.modality_proj_out, transformer.proj_out):
        assert kept.weight.dtype == torch.bfloat16
    return {"transformer": transformer}


# scheme -> (how the pipeline gets it, bound on the relative error of every job's latents); the largest error
# of the four outputs measured here (CPU, torch 2.13, torchao 0.18, gguf 0.19) in the comment
SCHEMES = {
    "torchao int8 weight-only": (lambda folder: pipeline_torchao(torchao.Int8WeightOnlyConfig()), 0.08),  # 0.035
    "torchao float8 weight-only": (lambda folder: pipeline_torchao(torchao.Float8WeightOnlyConfig()), 0.12),  # 0.059
    "GGUF Q8_0": (lambda folder: gguf_transformer(folder, "Q8_0"), 0.08),  # 0.038
    "GGUF Q4_0": (lambda folder: gguf_transformer(folder, "Q4_0"), 0.2),  # 0.10
    "fp8 storage, bf16 compute": (fp8_storage, 0.12),  # 0.055
}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_job_runs_quantized_close_to_bf16(scheme, folder, bf16_latents):
    load, bound = SCHEMES[scheme]
    latents = run_jobs(load(folder), folder)
    errors = {job: relative_error(latents[job], bf16_latents[job]) for job in bf16_latents}
    assert all(0 < error < bound for error in errors.values()), errors


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offload_runs_every_job_exactly(offload_type, folder, bf16_latents):
    transformer = UnityVideoTransformer3DModel.from_pretrained(
        folder / "pipeline" / "transformer", torch_dtype=torch.bfloat16
    )
    # on a GPU: onload_device "cuda"; here both are the CPU, which runs the hooks but cannot move anything
    transformer.enable_group_offload(torch.device("cpu"), offload_type=offload_type, num_blocks_per_group=1)
    latents = run_jobs({"transformer": transformer}, folder)
    for job, expected in bf16_latents.items():
        assert torch.equal(latents[job], expected), job


@GPU
@pytest.mark.parametrize(
    "kwargs, bound",
    [
        ({"load_in_8bit": True}, 0.05),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16}, 0.3),
    ],
)
def test_bitsandbytes_on_gpu(kwargs, bound, folder, bf16_latents):
    pytest.importorskip("bitsandbytes")
    config = PipelineQuantizationConfig(quant_mapping={"transformer": BitsAndBytesConfig(**kwargs)})
    latents = run_jobs({"quantization_config": config}, folder, device="cuda")
    errors = {job: relative_error(latents[job].cpu(), bf16_latents[job]) for job in bf16_latents}
    assert all(0 < error < bound for error in errors.values()), errors


def test_small_modules_stay_unquantized_by_default(folder):
    transformer_folder = folder / "pipeline" / "transformer"
    quantized = UnityVideoTransformer3DModel.from_pretrained(
        transformer_folder,
        torch_dtype=torch.bfloat16,
        quantization_config=TorchAoConfig(torchao.Int8WeightOnlyConfig()),
    )
    plain = torch.Tensor
    assert type(quantized.blocks[0].attn1.to_q.weight.data) is not plain
    for name in UNQUANTIZED_MODULES:
        linears = [m for m in quantized.get_submodule(name).modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m.weight.data) is plain for m in linears), name
    # the user's own choice wins: nothing kept
    everything = UnityVideoTransformer3DModel.from_pretrained(
        transformer_folder,
        torch_dtype=torch.bfloat16,
        quantization_config=TorchAoConfig(torchao.Int8WeightOnlyConfig(), modules_to_not_convert=[]),
    )
    assert type(everything.proj_out.weight.data) is not plain
    assert keep_unquantized(None) is None and keep_unquantized({"quant_method": "gguf"}) == {"quant_method": "gguf"}


def test_released_file_quantizes_as_it_loads(folder):
    """`from_single_file(..., quantization_config=...)` quantizes each weight as it is read (diffusers' quantizers take
    a file for pre-quantized unless told it is not, and would keep its bf16 weights), exactly as the folder does."""
    int8 = lambda: TorchAoConfig(torchao.Int8WeightOnlyConfig())  # noqa: E731
    from_file = UnityVideoTransformer3DModel.from_single_file(
        folder / "released.safetensors", config=folder, torch_dtype=torch.bfloat16, quantization_config=int8()
    )
    from_folder = UnityVideoTransformer3DModel.from_pretrained(
        folder / "pipeline" / "transformer", torch_dtype=torch.bfloat16, quantization_config=int8()
    )
    assert type(from_file.blocks[0].ffn.net[2].weight.data) is type(from_folder.blocks[0].ffn.net[2].weight.data)
    assert type(from_file.blocks[0].ffn.net[2].weight.data) is not torch.Tensor
    assert type(from_file.proj_out.weight.data) is torch.Tensor
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, from_file.config.in_channels, 2, 4, 4, generator=generator).bfloat16()
    text = torch.randn(1, 8, from_file.config.text_dim, generator=generator).bfloat16()
    inputs = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=text, modality_hidden_states=latents)
    with torch.no_grad():
        assert torch.equal(from_file(latents, **inputs).sample, from_folder(latents, **inputs).sample)


def test_gguf_file_keeps_names_config_and_small_modules(folder):
    path = folder / "transformer-Q8_0.gguf"
    gguf_transformer(folder, "Q8_0")
    reader = gguf.GGUFReader(path)
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["base.blocks.0.self_attn.q.weight"] == "Q8_0" and types["base.blocks.1.ffn.2.weight"] == "Q8_0"
    for name in ("base.time_projection.1.weight", "flow_in.weight", "flow_head.head.weight", "base.head.head.weight"):
        assert types[name] == "F32", name  # kept in higher precision
    assert types["base.blocks.0.self_attn.q.bias"] == "F32"
    model = UnityVideoTransformer3DModel.from_single_file(path)  # no config needed: the file holds it
    assert model.config.attention_head_dim == 32 and type(model.blocks[0].attn1.to_q).__name__ == "GGUFLinear"
    assert isinstance(model.hf_quantizer.quantization_config, GGUFQuantizationConfig)


def test_gguf_of_another_architecture_is_refused_by_name(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "flux.gguf", arch="flux")
    writer.add_tensor("double_blocks.0.img_attn.qkv.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="GGUF file of architecture 'flux', not UnityVideo"):
        UnityVideoTransformer3DModel.from_single_file(tmp_path / "flux.gguf")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unityvideo_diffusers", *args], capture_output=True, text=True)


def test_cli_writes_gguf_and_refuses_bad_requests(folder, tmp_path):
    config = folder / "config.json"
    common = ["convert", "--checkpoint", str(folder / "released.safetensors"), "--transformer-config", str(config)]
    result = run_cli(*common, "--to", "gguf", "--quant", "Q4_0", "--output", str(tmp_path / "t.gguf"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "Q4_0 GGUF" in result.stdout and (tmp_path / "t.gguf").is_file()
    result = run_cli(*common, "--to", "gguf", "--quant", "Q3_K", "--output", str(tmp_path / "u.gguf"))
    assert result.returncode == 2 and "--quant must be one of Q8_0, Q5_0, Q4_1, Q4_0" in result.stderr
    result = run_cli(*common, "--to", "gguf", "--output", str(tmp_path / "u.safetensors"))
    assert result.returncode == 2 and "one .gguf file" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gguf"]


def test_missing_gguf_package_is_named(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(CheckpointError, match="pip install gguf"):
        convert_released_to_gguf(folder / "released.safetensors", tmp_path / "x.gguf", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the command line: --quantize and --offload


def cli(*args):
    from unityvideo_diffusers.cli import main

    return main([str(arg) for arg in args])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from unityvideo_diffusers.video_io import save_video

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    save_video(np.random.default_rng(0).random((5, 32, 32, 3)), path)
    return path


@pytest.mark.parametrize(
    "job, quantize, offload",
    [
        (["generate", "a red ball", "--modality", "depth"], "int8", ["--offload"]),  # alone: model offload
        (
            ["control", "a red ball", "--modality", "depth", "--control-video", "CLIP"],
            "fp8",
            ["--offload", "group"],
        ),
        (["estimate", "CLIP", "--modality", "depth"], "GGUF", ["--offload", "group"]),
    ],
)
def test_cli_jobs_run_quantized_and_offloaded(job, quantize, offload, folder, clip, tmp_path):
    if quantize == "GGUF":
        gguf_transformer(folder, "Q8_0")
        quantize = folder / "transformer-Q8_0.gguf"
    job = [str(clip) if arg == "CLIP" else arg for arg in job]
    output = tmp_path / "out.mp4"
    small = ["--frames", 5, "--height", 32, "--width", 32, "--steps", 1, "--dtype", "bf16"]
    cli(*job, "--model", folder / "pipeline", "--quantize", quantize, *offload, *small, "--output", output)
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["settings"]["quantize"] == str(quantize)
    assert record["settings"]["offload"] == (offload[1] if len(offload) > 1 else "model")
    assert all(Path(path).is_file() for path in record["outputs"].values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "int4"], r"Unknown --quantize 'int4'; choose one of int8, fp8, nf4, or a .gguf file"),
        (["--quantize", "missing.gguf"], "--quantize missing.gguf does not exist"),
        (["--quantize", "nf4"], "--quantize nf4 runs on a GPU"),
        (["--quantize", "int8"], "--quantize int8 needs the torchao package: pip install torchao"),
        (["--offload", "disk"], "argument --offload: invalid choice: 'disk'"),
        (["--offload", "sequential"], "--offload sequential moves each layer to an accelerator"),
        (["--quantize", "GGUF", "--offload", "sequential", "--device", "cuda"], "cannot move GGUF weights"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "demo"])
def test_cli_refuses_bad_low_memory_options_before_writing(
    command, args, message, folder, tmp_path, monkeypatch, capsys
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else find_spec(name, *a)
    )
    monkeypatch.chdir(tmp_path)
    job = ["generate", "a red ball", "--output", tmp_path / "o.mp4"] if command == "generate" else ["demo"]
    if "GGUF" in args:
        gguf_transformer(folder, "Q8_0")
        args = [folder / "transformer-Q8_0.gguf" if arg == "GGUF" else arg for arg in args]
    with pytest.raises(SystemExit) as exit_info:
        cli(*job, "--model", folder / "pipeline", *args)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err.strip().splitlines()[-1])
    assert list(tmp_path.iterdir()) == []


@GPU_ONLY
def test_cli_sequential_offload_on_gpu(folder, tmp_path):
    output = tmp_path / "out.mp4"
    small = ["--frames", 5, "--height", 32, "--width", 32, "--steps", 1, "--dtype", "bf16"]
    gpu = ["--device", "cuda", "--offload", "sequential", "--quantize", "int8"]
    cli("generate", "a red ball", "--model", folder / "pipeline", *gpu, *small, "--output", output)
    assert output.is_file()


def test_offload_true_in_an_old_yaml_means_model_offload(folder, tmp_path):
    from unityvideo_diffusers.cli import _job_settings, build_parser

    (tmp_path / "job.yaml").write_text("offload: true\n")
    args = build_parser().parse_args(
        ["generate", "x", "--model", str(folder / "pipeline"), "--config", str(tmp_path / "job.yaml")]
    )
    assert _job_settings("generate", args)["offload"] == "model"
