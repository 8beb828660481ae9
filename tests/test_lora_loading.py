"""LoRA exports of the trainer through diffusers' own calls: `pipe.load_lora_weights(export)` reproduces the trained
model bit for bit in fp32 (adapters, the modality-stream modules trained in full, new modalities), and
`pipe.unload_lora_weights()` gives the base model back bit for bit, whichever way the LoRA was loaded."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from unityvideo_diffusers import UnityVideoPerceptionPipeline, UnityVideoPipeline
from unityvideo_diffusers.testing import tiny_pipeline_components
from unityvideo_diffusers.training import TrainConfig, load_trained_lora, train
from unityvideo_diffusers.training.trainer import prepare_trainable
from unityvideo_diffusers.video_io import save_video


SIZE = dict(num_frames=9, height=64, width=64)
NEW = "reflectance"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step LoRA run (rank 4, alpha 8: a LoRA scale of 2) that also adds a new modality; returns
    (config, export folder, the trainer's own model rebuilt from its last checkpoint)."""
    root = tmp_path_factory.mktemp("lora_run")
    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        for kind in ("rgb", "depth", NEW):
            save_video(rng.random((9, 64, 64, 3)), root / "data" / f"{kind}{i}")
        rows.append({"video": f"rgb{i}", "prompt": f"clip {i}", "depth": f"depth{i}", NEW: f"{NEW}{i}"})
    with open(root / "data" / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "depth", NEW])
        writer.writeheader()
        writer.writerows(rows)
    config = TrainConfig.from_dict(
        dict(
            model_path=str(root / "model"),
            dataset_path=str(root / "data" / "metadata.csv"),
            save_path=str(root / "run"),
            max_steps=3,
            checkpoint_every=100,
            lr_warmup_steps=0,
            learning_rate=1e-2,
            ema_decay=0.0,
            gradient_checkpointing=False,
            lora_rank=4,
            lora_alpha=8.0,
            new_modalities={NEW: "reflectance visualization."},
            **SIZE,
        )
    )
    export = train(config, progress=False)

    # the trainer's model: its starting transformer (loaded as a pipeline loads it, so into aligned memory: weights
    # left as views of the mapped file may be summed in another order, 1e-6 off), its modality, its adapters
    trained = UnityVideoPipeline.from_pretrained(config.model_path).transformer
    trained.add_modality(NEW)
    prepare_trainable(trained, config)
    [checkpoint] = (root / "run").glob("checkpoint-*")
    weights = load_file(checkpoint / "trainable_weights.safetensors")
    assert not trained.load_state_dict(weights, strict=False).unexpected_keys
    return config, export, trained.eval().requires_grad_(False)


def outputs(pipe) -> dict[str, np.ndarray]:
    """A joint video (RGB and depth) of `pipe`, and a perception video of the new modality when it has it."""
    common = dict(num_inference_steps=2, output_type="np", **SIZE)
    joint = pipe("a red ball", modality="depth", generator=torch.Generator().manual_seed(0), **common)
    results = {"joint": joint.frames, "joint_depth": joint.modality_frames}
    if NEW in pipe.transformer.config.modalities:
        clip = np.random.default_rng(1).random((9, 64, 64, 3))
        results[NEW] = UnityVideoPerceptionPipeline.from_pipe(pipe)(
            video=clip, modality=NEW, generator=torch.Generator().manual_seed(0), **common
        ).modality_frames
    return results


def assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        difference = np.abs(got[name] - expected[name]).max()
        assert difference == 0, f"{name}: max abs difference {difference}"


def test_load_lora_weights_gives_the_trained_model_bit_for_bit(run):
    config, export, trained = run
    pipe = UnityVideoPipeline.from_pretrained(config.model_path)
    pipe.load_lora_weights(export)
    assert NEW in pipe.transformer.config.modalities
    reference = UnityVideoPipeline(**{**pipe.components, "transformer": trained})
    assert_same(outputs(pipe), outputs(reference))


@pytest.mark.parametrize("how", ["load_lora_weights", "load_trained_lora", "state_dict"])
def test_unload_lora_weights_gives_the_base_model_back(run, how):
    config, export, _ = run
    pipe = UnityVideoPipeline.from_pretrained(config.model_path)
    base = outputs(pipe)
    original = {name: tensor.clone() for name, tensor in pipe.transformer.state_dict().items()}
    if how == "load_lora_weights":
        pipe.load_lora_weights(export)
    elif how == "load_trained_lora":
        load_trained_lora(pipe, export)
    else:
        pipe.load_lora_weights(load_file(export / "pytorch_lora_weights.safetensors"))
    assert any(
        not np.array_equal(value, base[name]) for name, value in outputs(pipe).items() if name in base
    )  # the LoRA acts
    pipe.unload_lora_weights()
    assert_same({name: value for name, value in outputs(pipe).items() if name in base}, base)
    state = pipe.transformer.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in original.items())
    pipe.load_lora_weights(export)  # a second round trip starts from the base again
    pipe.unload_lora_weights()
    assert all(torch.equal(pipe.transformer.state_dict()[name], tensor) for name, tensor in original.items())


def test_lora_option_of_the_jobs(run, tmp_path):
    """`unityvideo estimate --lora EXPORT --lora-scale 0.5` runs what Python runs with the LoRA at scale 0.5."""
    from unityvideo_diffusers.cli import main

    config, export, _ = run
    save_video(np.random.default_rng(1).random((9, 64, 64, 3)), tmp_path / "clip")
    small = ["--height", "64", "--width", "64", "--steps", "2", "--model", config.model_path]
    estimate = ["estimate", str(tmp_path / "clip"), "--modality", NEW, "--output", str(tmp_path / "cli")]
    assert main([*estimate, *small, "--lora", str(export), "--lora-scale", "0.5"]) == 0
    pipe = UnityVideoPerceptionPipeline.from_pretrained(config.model_path)
    pipe.load_lora_weights(export, adapter_name="mine")
    pipe.set_adapters("mine", 0.5)
    expected = pipe(
        video=str(tmp_path / "clip"),
        modality=NEW,
        prompt="",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).modality_frames[0]
    save_video(expected, tmp_path / "python")
    for cli_frame, python_frame in zip(sorted((tmp_path / "cli").iterdir()), sorted((tmp_path / "python").iterdir())):
        assert np.array_equal(np.asarray(PIL.Image.open(cli_frame)), np.asarray(PIL.Image.open(python_frame)))
    assert len(list((tmp_path / "cli").iterdir())) == 9


def test_load_lora_weights_from_a_hub_repo(run, tmp_path):
    """An export uploaded to the Hub loads by repo id with everything (read here from a Hub-shaped cache, offline,
    where diffusers needs `weight_name`)."""
    config, export, _ = run
    repo = tmp_path / "hub" / "models--me--lora"
    shutil.copytree(export, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    script = (
        "import torch; from safetensors.torch import load_file; "
        "from unityvideo_diffusers import UnityVideoPipeline; "
        f"pipe = UnityVideoPipeline.from_pretrained({config.model_path!r}); "
        "pipe.load_lora_weights('me/lora', weight_name='pytorch_lora_weights.safetensors'); "
        f"extra = load_file({str(export / 'unityvideo_extra_weights.safetensors')!r}); "
        "parameters = dict(pipe.transformer.named_parameters()); "
        "print(all(torch.equal(parameters[k], v) for k, v in extra.items()), "
        "pipe.transformer.config.modalities[-1], len(pipe.get_list_adapters()['transformer']))"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", NEW, "1"]
