"""Released checkpoint <-> diffusers folder: key coverage, bit-exact round trips, refusals that leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, reference_for
from safetensors.torch import load_file, save_file

from unityvideo_diffusers import UnityVideoTransformer3DModel
from unityvideo_diffusers.conversion import (
    CheckpointError,
    convert_diffusers_to_released,
    convert_released_to_diffusers,
    diffusers_to_released_key,
    expected_parameters,
    released_to_diffusers_key,
)
from unityvideo_diffusers.conversion.convert import plan_released_to_diffusers, transformer_config
from unityvideo_diffusers.models.safetensors_stream import TensorInfo, read_header


TINY_CONFIG = {**TINY}


def released_state(dtype=torch.bfloat16, seed=0):
    reference = reference_for(TINY, seed)
    return {name: tensor.to(dtype).contiguous() for name, tensor in reference.state_dict().items()}


@pytest.fixture
def released_file(tmp_path):
    path = tmp_path / "released.safetensors"
    save_file(released_state(), path)
    return path


def write_config(tmp_path, config=TINY_CONFIG):
    path = tmp_path / "tiny_config.json"
    path.write_text(json.dumps(config))
    return path


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- the released 5B layout, on paper


def released_5b_shapes():
    """The released file's keys and shapes, written out from the released layout (one key per module of the two-stream DiT), not from our code."""
    dim, ffn, text, freq, channels, layers = 3072, 14336, 4096, 256, 48, 30
    shapes = {
        "base.patch_embedding.weight": (dim, channels, 1, 2, 2),
        "base.patch_embedding.bias": (dim,),
        "base.text_embedding.0.weight": (dim, text),
        "base.text_embedding.0.bias": (dim,),
        "base.text_embedding.2.weight": (dim, dim),
        "base.text_embedding.2.bias": (dim,),
        "base.time_embedding.0.weight": (dim, freq),
        "base.time_embedding.0.bias": (dim,),
        "base.time_embedding.2.weight": (dim, dim),
        "base.time_embedding.2.bias": (dim,),
        "base.time_projection.1.weight": (6 * dim, dim),
        "base.time_projection.1.bias": (6 * dim,),
        "base.head.head.weight": (channels * 4, dim),
        "base.head.head.bias": (channels * 4,),
        "base.head.modulation": (1, 2, dim),
        "flow_patch_embedding.weight": (dim, channels, 1, 2, 2),
        "flow_patch_embedding.bias": (dim,),
        "flow_in.weight": (dim, dim),
        "flow_in.bias": (dim,),
        "flow_head.head.weight": (channels * 4, dim),
        "flow_head.head.bias": (channels * 4,),
        "flow_head.modulation": (1, 2, dim),
    }
    for name in ("depth", "raft", "segmentation", "skeleton", "densepose"):
        shapes[f"modality_embeddings.{name}"] = (dim,)
    for i in range(layers):
        block = f"base.blocks.{i}"
        shapes[f"{block}.modulation"] = (1, 6, dim)
        for attention in ("self_attn", "cross_attn"):
            for layer in "qkvo":
                shapes[f"{block}.{attention}.{layer}.weight"] = (dim, dim)
                shapes[f"{block}.{attention}.{layer}.bias"] = (dim,)
            shapes[f"{block}.{attention}.norm_q.weight"] = (dim,)
            shapes[f"{block}.{attention}.norm_k.weight"] = (dim,)
        shapes[f"{block}.norm3.weight"] = (dim,)
        shapes[f"{block}.norm3.bias"] = (dim,)
        shapes[f"{block}.ffn.0.weight"] = (ffn, dim)
        shapes[f"{block}.ffn.0.bias"] = (ffn,)
        shapes[f"{block}.ffn.2.weight"] = (dim, ffn)
        shapes[f"{block}.ffn.2.bias"] = (dim,)
    return shapes


def test_released_5b_layout_is_fully_covered_on_meta():
    shapes = released_5b_shapes()
    infos = {name: TensorInfo(torch.bfloat16, shape, 0, 0) for name, shape in shapes.items()}
    config = transformer_config(infos)  # the default: the released 5B model
    plan = plan_released_to_diffusers(infos, config)
    assert sorted(plan.values()) == sorted(shapes)  # 100% of the released keys, each to a distinct parameter
    expected = expected_parameters(config)
    assert len(expected) == len(shapes) == 30 * 27 + 27
    # the published file size is these bf16 tensors plus a header of plausible size (747 JSON entries)
    header_bytes = 10_020_954_352 - 8 - 2 * sum(torch.Size(shape).numel() for shape in shapes.values())
    assert 40_000 < header_bytes < 200_000
    assert list(config["modalities"]) == ["depth", "densepose", "raft", "segmentation", "skeleton"]


def test_key_map_is_a_bijection_on_the_released_layout():
    for key in released_5b_shapes():
        name = released_to_diffusers_key(key)
        assert name is not None and diffusers_to_released_key(name) == key
    assert released_to_diffusers_key("base.blocks.0.norm3.weight") == "blocks.0.norm2.weight"
    assert released_to_diffusers_key("base.blocks.3.self_attn.o.bias") == "blocks.3.attn1.to_out.0.bias"
    assert released_to_diffusers_key("base.blocks.0.ffn.0.weight") == "blocks.0.ffn.net.0.proj.weight"
    assert released_to_diffusers_key("base.head.modulation") == "scale_shift_table"
    assert released_to_diffusers_key("flow_in.weight") == "control_encoder.proj_in.weight"
    assert released_to_diffusers_key("base.blocks.0.norm1.weight") is None
    assert released_to_diffusers_key("base.freqs") is None


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("max_shard_size", ["5GB", "20KB"])
def test_round_trip_is_bit_exact(released_file, tmp_path, max_shard_size):
    folder = tmp_path / "diffusers"
    convert_released_to_diffusers(
        released_file, folder, transformer_config_overrides=TINY_CONFIG, max_shard_size=max_shard_size, progress=False
    )
    weights = sorted(p.name for p in (folder / "transformer").iterdir())
    if max_shard_size == "20KB":
        assert "diffusion_pytorch_model.safetensors.index.json" in weights and len(weights) > 3
    model = UnityVideoTransformer3DModel.from_pretrained(folder, subfolder="transformer", dtype=torch.bfloat16)
    assert model.config.num_layers == 2

    back, digest = convert_diffusers_to_released(folder, tmp_path / "back.safetensors", progress=False)
    original, returned = load_file(released_file), load_file(back)
    assert original.keys() == returned.keys()
    for name in original:
        assert original[name].dtype == returned[name].dtype == torch.bfloat16
        assert torch.equal(original[name].view(torch.int16), returned[name].view(torch.int16)), name
    assert len(digest) == 64 and leftovers(tmp_path) == [] and leftovers(folder / "transformer") == []


def test_fp32_output_and_transformer_only(released_file, tmp_path):
    folder = tmp_path / "transformer"
    convert_released_to_diffusers(
        released_file,
        folder,
        transformer_config_overrides=TINY_CONFIG,
        transformer_only=True,
        dtype="fp32",
        progress=False,
    )
    model = UnityVideoTransformer3DModel.from_pretrained(folder)
    original = load_file(released_file)
    assert model.blocks[1].attn2.to_out[0].weight.dtype == torch.float32
    assert torch.equal(model.blocks[1].attn2.to_out[0].weight, original["base.blocks.1.cross_attn.o.weight"].float())
    assert torch.equal(model.blocks[0].norm2.weight, original["base.blocks.0.norm3.weight"].float())


def test_base_makes_a_complete_pipeline_folder(released_file, tmp_path):
    base = tmp_path / "wan_base"
    for component in ("vae", "text_encoder", "tokenizer", "scheduler", "transformer"):
        (base / component).mkdir(parents=True)
        (base / component / "config.json").write_text(json.dumps({"component": component}))
    (base / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "WanPipeline",
                "vae": ["diffusers", "AutoencoderKLWan"],
                "text_encoder": ["transformers", "UMT5EncoderModel"],
                "tokenizer": ["transformers", "T5TokenizerFast"],
                "scheduler": ["diffusers", "UniPCMultistepScheduler"],
                "transformer": ["diffusers", "WanTransformer3DModel"],
            }
        )
    )
    output = tmp_path / "pipeline"
    convert_released_to_diffusers(
        released_file, output, base=str(base), transformer_config_overrides=TINY_CONFIG, progress=False
    )
    index = json.loads((output / "model_index.json").read_text())
    assert index["_class_name"] == "UnityVideoPipeline"
    assert index["transformer"] == [
        "unityvideo_diffusers.models.transformer_unityvideo",
        "UnityVideoTransformer3DModel",
    ]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    for component in ("vae", "text_encoder", "tokenizer"):
        assert json.loads((output / component / "config.json").read_text()) == {"component": component}
    scheduler = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "UniPCMultistepScheduler" and scheduler["flow_shift"] == 5.0
    assert scheduler["prediction_type"] == "flow_prediction" and scheduler["use_flow_sigmas"]
    assert not (output / "transformer" / "config.json").read_text().count("WanTransformer3DModel")


# ---------------------------------------------------------------- refusals leave nothing behind


def _corrupt(kind, released_file, tmp_path):
    state = released_state()
    path = tmp_path / f"{kind}.safetensors"
    if kind == "missing":
        del state["base.blocks.1.cross_attn.norm_k.weight"]
    elif kind == "unexpected":
        state["base.blocks.1.extra.weight"] = torch.zeros(3)
    elif kind == "shape":
        state["flow_in.weight"] = torch.zeros(48, 47, dtype=torch.bfloat16)
    elif kind == "truncated":
        data = released_file.read_bytes()
        path.write_bytes(data[: len(data) - 100])
        return path
    elif kind == "not_safetensors":
        torch.save(state, path)
        return path
    elif kind == "text":
        path.write_text("hello")
        return path
    save_file(state, path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", r"1 missing keys:\s+base.blocks.1.cross_attn.norm_k.weight"),
        ("unexpected", r"1 keys with no place in the model:\s+base.blocks.1.extra.weight"),
        (
            "shape",
            r"1 shape mismatches:\s+flow_in.weight \(48, 47\) -> control_encoder.proj_in.weight expects \(48, 48\)",
        ),
        ("truncated", "truncated"),
        ("not_safetensors", "not a safetensors file"),
        ("text", "not a safetensors file"),
    ],
)
def test_bad_checkpoints_are_refused_before_writing(kind, message, released_file, tmp_path):
    bad = _corrupt(kind, released_file, tmp_path)
    output = tmp_path / "out"
    with pytest.raises(CheckpointError, match=message):
        convert_released_to_diffusers(bad, output, transformer_config_overrides=TINY_CONFIG, progress=False)
    assert not output.exists() and leftovers(tmp_path) == []


def test_wrong_checksum_is_refused(released_file, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        convert_released_to_diffusers(
            released_file, output, transformer_config_overrides=TINY_CONFIG, sha256="0" * 64, progress=False
        )
    with pytest.raises(CheckpointError, match="64 hexadecimal"):
        convert_released_to_diffusers(
            released_file, output, transformer_config_overrides=TINY_CONFIG, sha256="abc", progress=False
        )
    assert not output.exists()


def test_released_file_names_are_checked_against_published_checksums(released_file, tmp_path):
    renamed = tmp_path / "unityvideo_wan22_ti2v_5b_step15000_ema.safetensors"
    os.replace(released_file, renamed)
    with pytest.raises(CheckpointError, match="expected 0df3909e"):
        convert_released_to_diffusers(
            renamed, tmp_path / "out", transformer_config_overrides=TINY_CONFIG, progress=False
        )


def test_failure_while_writing_leaves_nothing(released_file, tmp_path, monkeypatch):
    from unityvideo_diffusers.conversion import convert as convert_module

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert_module, "write_safetensors", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_released_to_diffusers(
            released_file, tmp_path / "out", transformer_config_overrides=TINY_CONFIG, progress=False
        )
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_existing_output_is_kept_unless_overwrite(released_file, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_released_to_diffusers(released_file, output, transformer_config_overrides=TINY_CONFIG, progress=False)
    assert (output / "keep.txt").exists()
    convert_released_to_diffusers(
        released_file, output, transformer_config_overrides=TINY_CONFIG, overwrite=True, progress=False
    )
    assert not (output / "keep.txt").exists() and (output / "transformer" / "config.json").exists()


def test_transformer_config_mistakes_are_named(released_file, tmp_path):
    with pytest.raises(CheckpointError, match=r"Unknown transformer config keys \['num_blocks'\]"):
        convert_released_to_diffusers(
            released_file, tmp_path / "o", transformer_config_overrides={"num_blocks": 2}, progress=False
        )
    with pytest.raises(CheckpointError, match="authors' config.json"):
        convert_released_to_diffusers(
            released_file,
            tmp_path / "o",
            transformer_config_overrides={"architecture": "UnifiedWanModel"},
            progress=False,
        )
    with pytest.raises(CheckpointError, match="another size needs --transformer-config"):
        convert_released_to_diffusers(released_file, tmp_path / "o", progress=False)  # the 5B default does not fit


def test_options_beyond_the_release_cannot_go_back(tmp_path):
    model = UnityVideoTransformer3DModel(**TINY, task_embedding=True)
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(CheckpointError, match="options the authors' code lacks"):
        convert_diffusers_to_released(tmp_path / "model", tmp_path / "x.safetensors", progress=False)


def test_header_reader_checks_sizes(released_file):
    header = read_header(released_file)
    assert header.tensors["flow_in.weight"].shape == (48, 48)


# ---------------------------------------------------------------- the command, as a user runs it


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unityvideo_diffusers", *args], capture_output=True, text=True)


def test_cli_converts_both_ways(released_file, tmp_path):
    config = write_config(tmp_path)
    result = run_cli(
        "convert",
        "--checkpoint",
        str(released_file),
        "--output",
        str(tmp_path / "d"),
        "--transformer-config",
        str(config),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "Wrote the diffusers transformer folder" in result.stdout
        and (tmp_path / "d" / "transformer" / "config.json").exists()
    )
    module = subprocess.run(
        [
            sys.executable,
            "-m",
            "unityvideo_diffusers.conversion",
            "--checkpoint",
            str(tmp_path / "d"),
            "--output",
            str(tmp_path / "r.safetensors"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert module.returncode == 0, module.stderr and "sha256" in module.stdout
    assert load_file(tmp_path / "r.safetensors").keys() == load_file(released_file).keys()


def test_cli_errors_are_one_line(released_file, tmp_path):
    result = run_cli("convert", "--checkpoint", str(tmp_path / "nope.safetensors"), "--output", str(tmp_path / "d"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("unityvideo convert: error: --checkpoint")
    truncated = _corrupt("truncated", released_file, tmp_path)
    result = run_cli("convert", "--checkpoint", str(truncated), "--output", str(tmp_path / "d"))
    assert result.returncode == 2 and "truncated" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_released_checkpoint_to_a_running_pipeline(tmp_path):
    """The user's path: released file + Wan2.2 base folder -> `UnityVideoPipeline.from_pretrained` -> a video."""
    from unityvideo_diffusers import UnityVideoPerceptionPipeline, UnityVideoPipeline
    from unityvideo_diffusers.testing import TINY_TRANSFORMER, tiny_pipeline_components

    components = tiny_pipeline_components()
    base = tmp_path / "wan_base"
    index = {"_class_name": "WanPipeline"}
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        components[name].save_pretrained(base / name)
        index[name] = [
            "transformers" if name in ("text_encoder", "tokenizer") else "diffusers",
            type(components[name]).__name__,
        ]
    (base / "model_index.json").write_text(json.dumps(index))
    released = tmp_path / "released.safetensors"
    save_file({k: v.contiguous() for k, v in reference_for(TINY_TRANSFORMER).state_dict().items()}, released)

    output = tmp_path / "unityvideo"
    convert_released_to_diffusers(
        released, output, base=str(base), transformer_config_overrides=TINY_TRANSFORMER, progress=False
    )
    pipe = UnityVideoPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red ball", modality="depth", num_frames=5, height=64, width=64, num_inference_steps=2)
    assert out.frames.shape == out.modality_frames.shape == (1, 5, 64, 64, 3)
    assert np.isfinite(out.frames).all()
    perception = UnityVideoPerceptionPipeline.from_pretrained(output)
    perception.set_progress_bar_config(disable=True)
    assert perception(
        video=out.frames[0], modality="depth", height=64, width=64, num_inference_steps=1
    ).modality_frames.shape == (1, 5, 64, 64, 3)
