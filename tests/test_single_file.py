"""`UnityVideoTransformer3DModel.from_single_file`: the released layout loaded directly, as convert + from_pretrained."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import TINY, random_inputs, reference_for
from safetensors.torch import save_file

from unityvideo_diffusers import UnityVideoTransformer3DModel
from unityvideo_diffusers.conversion import CheckpointError, convert_released_to_diffusers


@pytest.fixture
def released_file(tmp_path):
    """A random tiny checkpoint in the released layout (the independent reference's state dict), bf16."""
    path = tmp_path / "released.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in reference_for(TINY).state_dict().items()}, path)
    return path


@pytest.fixture
def config_folder(tmp_path):
    with torch.device("meta"):
        UnityVideoTransformer3DModel(**TINY).save_config(tmp_path / "tiny_config")
    return tmp_path / "tiny_config"


def all_tensors(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float32])
def test_equals_convert_then_from_pretrained_bit_for_bit(released_file, config_folder, tmp_path, dtype):
    folder = tmp_path / "converted"
    convert_released_to_diffusers(
        released_file, folder, transformer_config_overrides=TINY, transformer_only=True, progress=False
    )
    expected = UnityVideoTransformer3DModel.from_pretrained(folder, torch_dtype=dtype)
    loaded = UnityVideoTransformer3DModel.from_single_file(
        released_file, config=config_folder, torch_dtype=dtype, progress=False
    )
    expected_tensors, loaded_tensors = all_tensors(expected), all_tensors(loaded)
    assert expected_tensors.keys() == loaded_tensors.keys()
    for name, tensor in expected_tensors.items():
        other = loaded_tensors[name]
        assert other.dtype == tensor.dtype and other.device == tensor.device, name
        assert torch.equal(other.view(torch.uint8), tensor.view(torch.uint8)), name
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(expected.config) and loaded.config._name_or_path == str(released_file)
    assert not loaded.training and not any(p.is_meta for p in loaded.parameters())
    inputs = {k: v.to(dtype or torch.float32) for k, v in random_inputs().items()}
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, modality="depth").sample, expected(**inputs, modality="depth").sample)


def test_config_from_a_pipeline_folder_and_default_config(released_file, tmp_path, config_folder):
    pipeline_folder = tmp_path / "pipeline"
    (pipeline_folder / "transformer").mkdir(parents=True)
    (pipeline_folder / "transformer" / "config.json").write_bytes((config_folder / "config.json").read_bytes())
    model = UnityVideoTransformer3DModel.from_single_file(released_file, config=pipeline_folder, progress=False)
    assert model.config.num_layers == TINY["num_layers"]
    # no config: the released 5B one, which this tiny file does not fit
    with pytest.raises(CheckpointError, match="(?s)shape mismatches.*another size needs config="):
        UnityVideoTransformer3DModel.from_single_file(released_file, progress=False)
    with pytest.raises(CheckpointError, match="UnityVideoControlEncoder config, not a UnityVideoTransformer3DModel"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.json").write_text('{"_class_name": "UnityVideoControlEncoder"}')
        UnityVideoTransformer3DModel.from_single_file(released_file, config=tmp_path / "other", progress=False)


def test_checksum_comes_from_the_same_read(released_file, config_folder, tmp_path):
    digest = hashlib.sha256(released_file.read_bytes()).hexdigest()
    model = UnityVideoTransformer3DModel.from_single_file(
        released_file, config=config_folder, sha256=digest.upper(), progress=False
    )
    assert model.config.num_layers == TINY["num_layers"]
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        UnityVideoTransformer3DModel.from_single_file(released_file, config=config_folder, sha256="0" * 64)
    # a published file name is checked against the published checksum without being asked
    renamed = tmp_path / "unityvideo_wan22_ti2v_5b_step15000_ema.safetensors"
    renamed.write_bytes(released_file.read_bytes())
    with pytest.raises(CheckpointError, match=f"expected 0df3909e.*got {digest}"):
        UnityVideoTransformer3DModel.from_single_file(renamed, config=config_folder, progress=False)


def other_checkpoints(state):
    """Other models' files, by their key names: Wan in its original layout, diffusers' layout, something else."""
    wan_original = {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
    comfy_wan = {f"model.diffusion_model.{k}": v for k, v in wan_original.items()}
    diffusers_layout = {
        "blocks.0.attn1.to_q.weight": torch.zeros(2, 2),
        "control_encoder.proj_in.weight": torch.zeros(2),
    }
    flux = {"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}
    return {
        "wan_original": (wan_original, "Wan2.x transformer in the original layout"),
        "comfy_wan": (comfy_wan, "Wan2.x transformer in the original layout"),
        "diffusers_layout": (diffusers_layout, "UnityVideo transformer in diffusers' layout"),
        "flux": (flux, r"not a UnityVideo checkpoint: none of its 1 tensors \(double_blocks"),
    }


@pytest.mark.parametrize("kind", ["wan_original", "comfy_wan", "diffusers_layout", "flux"])
def test_another_models_checkpoint_is_named(kind, tmp_path, config_folder):
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in reference_for(TINY).state_dict().items()}
    tensors, message = other_checkpoints(state)[kind]
    path = tmp_path / f"{kind}.safetensors"
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=message):
        UnityVideoTransformer3DModel.from_single_file(path, config=config_folder, progress=False)


def test_truncated_file_is_refused_before_loading(released_file, config_folder, tmp_path):
    data = released_file.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        UnityVideoTransformer3DModel.from_single_file(truncated, config=config_folder, progress=False)


def test_hub_address_is_fetched_as_one_file(released_file, config_folder, monkeypatch):
    from unityvideo_diffusers.models import single_file

    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(released_file)

    monkeypatch.setattr(single_file, "hf_hub_download", download)
    url = "https://huggingface.co/KlingTeam/UnityVideo/blob/main/checkpoints/tiny.safetensors"
    UnityVideoTransformer3DModel.from_single_file(url, config=config_folder, revision="abc", progress=False)
    assert calls == [("KlingTeam/UnityVideo", "checkpoints/tiny.safetensors", {"revision": "abc"})]


def test_a_pipeline_from_the_single_file_and_the_wan_base(released_file, config_folder, tmp_path):
    """The documented route: `UnityVideoPipeline.from_pretrained(wan_base, transformer=from_single_file(...))`."""
    from diffusers import WanPipeline, WanTransformer3DModel

    from unityvideo_diffusers import UnityVideoPipeline
    from unityvideo_diffusers.testing import TINY_TRANSFORMER, tiny_pipeline_components

    components = tiny_pipeline_components()
    components["transformer"] = WanTransformer3DModel(
        **{k: v for k, v in TINY_TRANSFORMER.items()}, patch_size=(1, 2, 2), qk_norm="rms_norm_across_heads"
    )
    WanPipeline(**components, expand_timesteps=True).save_pretrained(tmp_path / "wan_base")

    released = tmp_path / "released_48.safetensors"
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in reference_for(TINY_TRANSFORMER).state_dict().items()},
        released,
    )
    with torch.device("meta"):
        UnityVideoTransformer3DModel(**TINY_TRANSFORMER).save_config(tmp_path / "config_48")
    transformer = UnityVideoTransformer3DModel.from_single_file(
        released, config=tmp_path / "config_48", torch_dtype=torch.float32, progress=False
    )
    pipe = UnityVideoPipeline.from_pretrained(tmp_path / "wan_base", transformer=transformer)
    assert pipe.transformer is transformer and type(pipe.vae).__name__ == "AutoencoderKLWan"
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red ball", modality="depth", num_frames=5, height=64, width=64, num_inference_steps=2)
    assert out.frames.shape == out.modality_frames.shape == (1, 5, 64, 64, 3)
