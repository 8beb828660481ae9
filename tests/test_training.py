"""Fine-tuning on a tiny dataset: the recipe, LoRA and full runs, exports, exact resumption, two processes."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unityvideo_diffusers import UnityVideoPipeline
from unityvideo_diffusers.tasks import resolve_task
from unityvideo_diffusers.testing import tiny_pipeline_components
from unityvideo_diffusers.training import ConfigError, TrainConfig, load_trained_lora, train
from unityvideo_diffusers.training.recipe import lr_factor, noise_streams, sample_timesteps, stream_losses
from unityvideo_diffusers.video_io import save_video


SIZE = dict(num_frames=9, height=64, width=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny pipeline folder and a CSV of 4 clips (depth for all, flow for two) plus one broken row."""
    root = tmp_path_factory.mktemp("world")
    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        for kind in ("rgb", "depth", "flow"):
            save_video(rng.random((9, 64, 64, 3)), root / "data" / f"{kind}{i}")
        rows.append(
            {"video": f"rgb{i}", "prompt": f"clip {i}", "depth": f"depth{i}", "raft": f"flow{i}" if i < 2 else ""}
        )
    rows.append({"video": "missing_clip", "prompt": "gone", "depth": "depth0", "raft": ""})
    with open(root / "data" / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "depth", "raft"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def config_for(world: Path, save: Path, **overrides) -> TrainConfig:
    values = dict(
        model_path=str(world / "model"),
        dataset_path=str(world / "data" / "metadata.csv"),
        save_path=str(save),
        max_steps=6,
        checkpoint_every=2,
        lr_warmup_steps=0,
        learning_rate=1e-3,
        ema_every=1,
        gradient_checkpointing=False,
        **SIZE,
    )
    return TrainConfig.from_dict({**values, **overrides})


# ---------------------------------------------------------------- the recipe's math


def test_recipe_math():
    generator = torch.Generator().manual_seed(0)
    t = sample_timesteps(100_000, "logit_normal", 5.0, generator)
    assert 0 < t.min() and t.max() < 1 and 0.75 < t.median() < 0.9  # sigmoid(0) = 0.5 shifted: 5 * .5 / 3 = 0.83
    rgb, modality = torch.randn(2, 4, 2, 2, 2), torch.randn(2, 4, 2, 2, 2)
    streams = noise_streams(resolve_task("flow2video"), rgb, modality, torch.tensor([0.3, 0.9]), generator)
    assert torch.equal(streams.modality, modality) and streams.modality_target is None  # the condition stays clean
    noise = streams.rgb_target + rgb  # target = noise - x_0
    t = torch.tensor([0.3, 0.9]).view(-1, 1, 1, 1, 1)
    assert torch.allclose(streams.rgb, (1 - t) * rgb + t * noise, atol=1e-6)
    losses = stream_losses((streams.rgb_target, modality), streams)
    assert losses.keys() == {"rgb_loss", "loss"} and losses["loss"] == 0
    error = (torch.randn(2, 4, 2, 2, 2) - streams.rgb_target) ** 2
    uniform = stream_losses((streams.rgb_target + error.sqrt(), modality), streams, torch.full((2, 1, 2, 2, 2), 3.0))
    assert uniform["rgb_loss"] == pytest.approx(
        float(error.mean()), rel=1e-5
    )  # a weighted mean: uniform weights change nothing
    only_first = torch.zeros(2, 1, 2, 2, 2)
    only_first[0] = 1
    weighted = stream_losses((streams.rgb_target + error.sqrt(), modality), streams, only_first)
    assert weighted["rgb_loss"] == pytest.approx(float(error[0].mean()), rel=1e-5)
    assert lr_factor(0, 10, 100, 0.1) == 0.1 and lr_factor(10, 10, 100, 0.1) == 1.0
    assert abs(lr_factor(100, 10, 100, 0.1) - 0.1) < 1e-9 and lr_factor(50, 0, 100, 1.0) == 1.0


# ---------------------------------------------------------------- configuration refusals


def test_bad_configs_are_named_before_loading_anything(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown key 'learning_rte'; did you mean 'learning_rate'\?"):
        TrainConfig.from_dict({"learning_rte": 1e-4})
    config_file = tmp_path / "train.yaml"
    config_file.write_text(
        "model_path: nowhere\ndataset_path: nothing.csv\nnum_frames: 16\ntraining_mode: qlora\nbatch_size: 0\n"
        "foreground_loss_weight: -1\n"
    )
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_yaml(config_file)
    message = str(error.value)
    for expected in (
        "dataset_path nothing.csv is not a file",
        "num_frames must be 4k+1",
        "training_mode must be 'lora' or 'full'",
        "batch_size must be a positive integer",
        "foreground_loss_weight must be a finite number >= 0",
    ):
        assert expected in message


def test_cli_config_errors_are_one_line(tmp_path):
    config_file = tmp_path / "train.yaml"
    config_file.write_text("model_path: x\ndataset_path: y.csv\nlearning_rate: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "unityvideo_diffusers", "train", "--config", str(config_file)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "learning_rate must be positive" in result.stderr


# ---------------------------------------------------------------- runs


def test_lora_run_trains_adapters_and_exports(world, tmp_path):
    export = train(config_for(world, tmp_path / "run"), progress=False)
    cache_index = json.loads((tmp_path / "run" / "latent_cache" / "index.json").read_text())
    assert cache_index["usable"] == [0, 1, 2, 3] and list(cache_index["skipped"]) == ["4"]  # the broken row, counted
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {record["task"] for record in log} <= {"joint", "control", "perception"}
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == [
        "checkpoint-0000002",
        "checkpoint-0000004",
        "checkpoint-0000006",
    ]

    # only adapters (and the modality-stream modules) changed; the export reproduces the trained model
    base = UnityVideoPipeline.from_pretrained(world / "model")
    original = {k: v.clone() for k, v in base.transformer.state_dict().items()}
    load_trained_lora(base, export)
    extra = load_file(export / "unityvideo_extra_weights.safetensors")
    assert extra and all(
        k.startswith(("control_encoder.", "modality_proj_out", "modality_scale_shift_table")) for k in extra
    )
    changed = [
        k
        for k, v in base.transformer.state_dict().items()
        if "lora" not in k and not torch.equal(v, original[k.replace(".base_layer", "")])
    ]
    assert set(changed) == set(extra)
    trained = load_file(tmp_path / "run" / "checkpoint-0000006" / "trainable_weights.safetensors")
    lora_names = [k for k in trained if "lora_A" in k]
    assert lora_names and all(
        torch.equal(base.transformer.get_parameter(k.replace(".default.", ".default_0.")), trained[k])
        for k in lora_names
    )


def test_training_reduces_the_loss(world, tmp_path):
    """Full fine-tuning on 4 clips: the flow-matching loss on fixed (t, noise) falls."""
    config = config_for(
        world,
        tmp_path / "full",
        training_mode="full",
        max_steps=40,
        checkpoint_every=100,
        learning_rate=2e-3,
        prompt_dropout=0.0,
        task="joint",
        ema_decay=0.0,
        held_out_loss_every=15,
        held_out_dataset_path=str(world / "data" / "metadata.csv"),
    )

    def fixed_loss(transformer):
        from unityvideo_diffusers.training.data import LatentCache, pad_tokens

        cache = LatentCache(tmp_path / "full" / "latent_cache")
        _, prompts = cache.load()
        generator, total = torch.Generator().manual_seed(123), 0.0
        for row in range(4):
            sample = cache.sample(row)
            t = torch.full((1,), 0.6)
            streams = noise_streams(
                resolve_task("joint"), sample["rgb"][None], sample["modality.depth"][None], t, generator
            )
            with torch.no_grad():
                prediction = transformer(
                    streams.rgb,
                    t * 1000,
                    pad_tokens(sample["prompt_embeds"], 512)[None],
                    streams.modality,
                    prompts["modality.depth"][None],
                    modality="depth",
                    return_dict=False,
                )
            total += float(stream_losses(prediction, streams)["loss"])
        return total / 4

    from unityvideo_diffusers import UnityVideoTransformer3DModel

    train(config, progress=False)
    before = fixed_loss(UnityVideoTransformer3DModel.from_pretrained(world / "model", subfolder="transformer").eval())
    after = fixed_loss(
        UnityVideoTransformer3DModel.from_pretrained(tmp_path / "full" / "final" / "transformer").eval()
    )
    assert after < 0.8 * before, (before, after)

    # the trainer's own held-out loss: before any update, every 15 updates and at the end, for each trained pair
    held_out = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    held_out = [record for record in held_out if "held_out" in record]
    assert [record["step"] for record in held_out] == [0, 15, 30, 40]
    assert all(set(record["held_out"]) == {"joint/depth", "joint/raft"} for record in held_out)
    first, last = held_out[0]["held_out"]["joint/depth"], held_out[-1]["held_out"]["joint/depth"]
    assert last < 0.8 * first, (first, last)


def test_runs_share_a_latent_cache_that_fits(world, tmp_path, monkeypatch):
    first = config_for(world, tmp_path / "first", max_steps=1, ema_decay=0.0)
    train(first, progress=False)
    from unityvideo_diffusers.training.data import LatentCache

    def no_encoding(*args, **kwargs):
        raise AssertionError("a fitting cache must not be encoded again")

    monkeypatch.setattr(LatentCache, "encode_rows", no_encoding)
    shared = str(tmp_path / "first" / "latent_cache")
    train(config_for(world, tmp_path / "second", max_steps=1, ema_decay=0.0, latent_cache=shared), progress=False)
    assert not (tmp_path / "second" / "latent_cache").exists()
    with pytest.raises(
        ConfigError, match=r"encoded at frames x height x width \[9, 64, 64\], this run wants \[5, 64, 64\]"
    ):
        train(config_for(world, tmp_path / "third", max_steps=1, latent_cache=shared, num_frames=5), progress=False)
    with pytest.raises(
        ConfigError, match="its prompts were cut at 512 tokens, this run's at 64"
    ):  # the tokenizer's length
        train(
            config_for(world, tmp_path / "fourth", max_steps=1, latent_cache=shared, max_sequence_length=64),
            progress=False,
        )
    with pytest.raises(ConfigError, match="held_out_loss_every needs held_out_dataset_path"):
        config_for(world, tmp_path / "x", held_out_loss_every=5)


def test_a_task_can_draw_modalities_with_its_own_weights(world, tmp_path):
    """task_modality_weights replaces modality_weights for the tasks it names: here perception always draws flow,
    the other tasks both modalities, as before."""
    from unityvideo_diffusers.training.trainer import MultiTaskSampler

    config = config_for(world, tmp_path, task_modality_weights={"video2flow": {"raft": 1.0}})
    drawn = {}
    sampler = MultiTaskSampler(config, {"depth": [0, 1, 2, 3], "raft": [0, 1]}, rank=0, world=1)
    for step in range(300):
        task, modality, _ = sampler.draw(step)
        drawn.setdefault(task.name, set()).add(modality)
    assert drawn == {"perception": {"raft"}, "joint": {"depth", "raft"}, "control": {"depth", "raft"}}
    plain = MultiTaskSampler(config_for(world, tmp_path), {"depth": [0, 1, 2, 3], "raft": [0, 1]}, rank=0, world=1)
    assert [plain.draw(step)[0].name for step in range(50)] == [
        MultiTaskSampler(config, plain.rows_with, 0, 1).draw(s)[0].name for s in range(50)
    ]  # the same tasks, step by step
    with pytest.raises(ConfigError, match="task_modality_weights give perception no weight"):
        MultiTaskSampler(
            config_for(world, tmp_path, task_modality_weights={"perception": {"segmentation": 1.0}}),
            {"depth": [0], "raft": [0]},
            rank=0,
            world=1,
        )
    with pytest.raises(ConfigError, match="give a mapping of modality to weight"):
        config_for(world, tmp_path, task_modality_weights={"joint": 3})


def test_captions_of_one_clip_share_its_encoding(world, tmp_path):
    """Rows with the same videos and other prompts (several captions of a clip) are encoded by the VAE once: the
    same latents, their own prompt embeddings."""
    from unityvideo_diffusers.training.data import LatentCache, read_metadata

    data = world / "data"
    with open(tmp_path / "captions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "depth"])
        writer.writeheader()
        for prompt in ("a red ball bouncing", "a ball", "a red ball bouncing on a wooden floor"):
            writer.writerow({"video": str(data / "rgb0"), "prompt": prompt, "depth": str(data / "depth0")})
        writer.writerow({"video": str(data / "rgb1"), "prompt": "a ball", "depth": str(data / "depth1")})
    pipe = UnityVideoPipeline.from_pretrained(world / "model")
    calls = []
    encode = pipe.vae.encode
    pipe.vae.encode = lambda video: calls.append(video.shape[0]) or encode(video)
    cache = LatentCache(tmp_path / "cache")
    with torch.no_grad():
        cache.build(
            read_metadata(tmp_path / "captions.csv", ["depth"]), pipe, ["depth"], 9, 64, 64, 16, progress=False
        )
    assert calls == [2, 2]  # one call per clip, its RGB and depth videos together
    first, second, third, other = (cache.sample(i) for i in range(4))
    for row in (second, third):
        assert torch.equal(row["rgb"], first["rgb"]) and torch.equal(row["modality.depth"], first["modality.depth"])
    assert not torch.equal(other["rgb"], first["rgb"])
    assert len({tuple(row["prompt_embeds"].shape) for row in (first, second, third)}) == 3
    assert torch.equal(other["prompt_embeds"], second["prompt_embeds"])


def test_new_modality_trains_and_loads(world, tmp_path):
    data = world / "data"
    rows = list(csv.DictReader(open(data / "metadata.csv")))
    with open(data / "reflectance.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "reflectance"])
        writer.writeheader()
        writer.writerows({"video": r["video"], "prompt": r["prompt"], "reflectance": r["depth"]} for r in rows[:4])
    config = config_for(
        world,
        tmp_path / "reflectance",
        dataset_path=str(data / "reflectance.csv"),
        max_steps=3,
        new_modalities={"reflectance": "reflectance visualization."},
        task="perception",
    )
    export = train(config, progress=False)
    pipe = UnityVideoPipeline.from_pretrained(world / "model")
    load_trained_lora(pipe, export)
    assert "reflectance" in pipe.transformer.config.modalities
    assert (
        pipe.transformer.control_encoder.modality_embeddings["reflectance"].abs().sum() > 0
    )  # trained, not the zero init


# ---------------------------------------------------------------- exact resumption, even after SIGKILL


def _run_cli(config_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "unityvideo_diffusers", "train", "--config", str(config_path), "--quiet", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _write_config(world: Path, save: Path, path: Path) -> Path:
    config = config_for(
        world,
        save,
        max_steps=24,
        checkpoint_every=1,
        keep_last_checkpoints=30,
        gradient_accumulation_steps=2,
        batch_size=2,
    )
    import yaml

    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def test_sigkill_and_resume_equals_an_uninterrupted_run(world, tmp_path):
    straight = _run_cli(_write_config(world, tmp_path / "straight", tmp_path / "straight.yaml"))
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-3000:]

    killed_config = _write_config(world, tmp_path / "killed", tmp_path / "killed.yaml")
    victim = _run_cli(killed_config)
    target = tmp_path / "killed" / f"checkpoint-{random.Random(os.getpid()).randint(3, 15):07d}"
    deadline = time.time() + 600
    while not target.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    # whatever was on disk at the kill: complete checkpoints, at most one partial one (never used)
    for checkpoint in (tmp_path / "killed").glob("checkpoint-*"):
        assert (checkpoint / "trainable_weights.safetensors").is_file() and (checkpoint / "optimizer.bin").is_file()
        load_file(checkpoint / "trainable_weights.safetensors")

    resumed = _run_cli(killed_config, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    final_straight = load_file(tmp_path / "straight" / "checkpoint-0000024" / "trainable_weights.safetensors")
    final_resumed = load_file(tmp_path / "killed" / "checkpoint-0000024" / "trainable_weights.safetensors")
    assert final_straight.keys() == final_resumed.keys()
    for name, tensor in final_straight.items():
        assert torch.allclose(final_resumed[name], tensor, rtol=1e-6, atol=1e-9), name
    ema_straight = load_file(tmp_path / "straight" / "final_ema" / "pytorch_lora_weights.safetensors")
    ema_resumed = load_file(tmp_path / "killed" / "final_ema" / "pytorch_lora_weights.safetensors")
    assert all(torch.allclose(ema_resumed[k], v, rtol=1e-6, atol=1e-9) for k, v in ema_straight.items())


# ---------------------------------------------------------------- two processes


def test_two_process_cpu_run_keeps_ranks_identical(world, tmp_path):
    config_path = tmp_path / "ddp.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(config_for(world, tmp_path / "ddp", max_steps=4).to_dict()))
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "unityvideo_diffusers.training",
            "--config",
            str(config_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fingerprints = json.loads((tmp_path / "ddp" / "rank_fingerprints.json").read_text())
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    held = json.loads((tmp_path / "ddp" / "rank_memory.json").read_text())  # data parallel: each holds everything
    base = UnityVideoPipeline.from_pretrained(world / "model").transformer.parameters()
    lora = load_file(tmp_path / "ddp" / "final" / "pytorch_lora_weights.safetensors").values()
    total = sum(p.numel() for p in base) + sum(p.numel() for p in lora)
    assert [rank["parameters"] for rank in held] == [total, total]
    assert all(rank["optimizer_state"] == 2 * rank["trainable_parameters"] for rank in held)


def test_validation_videos(world, tmp_path):
    config = config_for(
        world,
        tmp_path / "val",
        max_steps=2,
        validation_every=2,
        validation_prompts=["a red ball"],
        validation_steps=1,
        ema_decay=0.0,
    )
    train(config, progress=False)
    written = sorted(p.name for p in (tmp_path / "val" / "validation" / "step-0000002").iterdir())
    assert written == ["00_depth.mp4", "00_rgb.mp4"]
    with pytest.raises(ConfigError, match="validation_every needs validation_prompts"):
        config_for(world, tmp_path / "x", validation_every=5)


def test_extra_loss_hook_is_added(world, tmp_path):
    calls = []

    def modality_smoothness(transformer, batch, prediction, streams, task):
        calls.append(task.name)
        return 0.0 * prediction[1].float().diff(dim=2).abs().mean() + 1.0

    train(
        config_for(world, tmp_path / "extra", max_steps=2, ema_decay=0.0, log_every=1),
        extra_loss=modality_smoothness,
        progress=False,
    )
    log = [json.loads(line) for line in (tmp_path / "extra" / "train_log.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and all(record["extra"] == 1.0 for record in log)
    assert all(
        abs(record["loss"] - 1.0 - record.get("rgb_loss", 0) - record.get("modality_loss", 0)) < 1e-5 for record in log
    )


def test_foreground_loss_weight_weights_the_latents_over_objects(world, tmp_path):
    """With a segmentation column the cache keeps each clip's object mask at the latent grid, and
    `foreground_loss_weight` w makes the RGB stream's loss the mean of its squared velocity error weighted 1 + w there;
    the modality stream's stays the plain mean."""
    data, rng, rows = tmp_path / "data", np.random.default_rng(1), []
    for i in range(2):
        segmentation = np.zeros((9, 64, 64, 3))
        segmentation[:, 16:32, 16 * i : 16 * i + 16] = 1.0  # white: instance 1; the tiny VAE's latent pixel is 16 x 16
        save_video(rng.random((9, 64, 64, 3)), data / f"rgb{i}")
        save_video(segmentation, data / f"segmentation{i}")
        rows.append({"video": f"rgb{i}", "prompt": f"clip {i}", "segmentation": f"segmentation{i}"})
    with open(data / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "segmentation"])
        writer.writeheader()
        writer.writerows(rows)
    expected_losses = []

    def weighted_mean(transformer, batch, prediction, streams, task):
        weighted = 1 + 4.0 * batch["foreground"][:, None].float()
        pairs = (
            ("rgb_loss", prediction[0], streams.rgb_target, weighted),
            ("modality_loss", prediction[1], streams.modality_target, torch.ones(())),
        )
        expected_losses.append(
            {
                name: float((weight * (predicted.detach() - target) ** 2).sum() / weight.expand_as(target).sum())
                for name, predicted, target, weight in pairs
                if target is not None
            }
        )
        return 0.0 * prediction[0].sum()

    save = tmp_path / "run"
    train(
        config_for(
            world,
            save,
            dataset_path=str(data / "metadata.csv"),
            max_steps=3,
            ema_decay=0.0,
            log_every=1,
            foreground_loss_weight=4.0,
        ),
        extra_loss=weighted_mean,
        progress=False,
    )
    from unityvideo_diffusers.training.data import LatentCache

    for i in range(2):
        expected_mask = torch.zeros(3, 4, 4, dtype=torch.bool)
        expected_mask[:, 1, i] = True
        assert torch.equal(LatentCache(save / "latent_cache").sample(i)["foreground"], expected_mask)
    log = [json.loads(line) for line in (save / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == len(expected_losses) == 3
    for record, expected in zip(log, expected_losses):
        assert expected and all(record[name] == pytest.approx(value, rel=1e-5) for name, value in expected.items())
    with pytest.raises(ConfigError, match="add 'segmentation' to modalities"):  # the world's CSV has no such column
        train(config_for(world, tmp_path / "no_masks", max_steps=1, foreground_loss_weight=1.0), progress=False)
    assert not (tmp_path / "no_masks" / "latent_cache").exists()  # refused before encoding anything
    # estimation alone never generates RGB, so the weight has nothing to act on and needs no masks
    train(
        config_for(world, tmp_path / "estimation", task="perception", max_steps=1, foreground_loss_weight=1.0),
        progress=False,
    )
    assert (tmp_path / "estimation" / "final").is_dir()


def test_compiled_blocks_train_like_eager_ones(world, tmp_path):
    """`compile_blocks` compiles in place: same checkpoint names, the same losses step by step as an eager run up to
    the compiler's reordering of float operations, and weights within what that reordering can move them: Adam's
    first updates are about +-lr per weight whatever the gradient's size, so a gradient near zero may flip sign."""
    finals, losses = {}, {}
    steps, learning_rate = 3, 1e-3
    for name, compiled in (("eager", False), ("compiled", True)):
        save = tmp_path / name
        train(
            config_for(
                world,
                save,
                training_mode="full",
                max_steps=steps,
                ema_decay=0.0,
                compile_blocks=compiled,
                learning_rate=learning_rate,
                log_every=1,
            ),
            progress=False,
        )
        finals[name] = load_file(save / f"checkpoint-{steps:07d}" / "trainable_weights.safetensors")
        losses[name] = [json.loads(line)["loss"] for line in (save / "train_log.jsonl").read_text().splitlines()]
    assert len(losses["eager"]) == steps
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert finals["eager"].keys() == finals["compiled"].keys()
    for key, tensor in finals["eager"].items():
        assert (finals["compiled"][key] - tensor).abs().max() <= 2 * steps * learning_rate * 10, (
            key
        )  # 10: added modules' lr


def test_max_minutes_stops_the_run_and_exports_what_it_reached(world, tmp_path):
    """A time-budgeted run stops at the first step past `max_minutes`, with its last checkpoint, log line and export
    at that step; resuming it continues towards max_steps."""
    save = tmp_path / "run"
    export = train(config_for(world, save, max_steps=10**6, checkpoint_every=10**6, max_minutes=1e-4), progress=False)
    [checkpoint] = save.glob("checkpoint-*")
    reached = int(checkpoint.name.split("-")[1])
    assert 1 <= reached < 10**6
    log = [json.loads(line) for line in (save / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == reached - 1  # "step" of a log line: the step's index
    assert (export / "unityvideo_extra_weights.safetensors").is_file()
    with pytest.raises(ConfigError, match="max_minutes must be a positive number"):
        config_for(world, save, max_minutes=0)


# ---------------------------------------------------------------- sharded (FSDP2) on two CPU processes


def _sharded_launch(accelerate_config: str) -> list[str]:
    """`unityvideo train` on two CPU processes with one of configs/accelerate/ (sharded_on_cpu.py: how accelerate
    takes its FSDP or DeepSpeed path there)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(Path(__file__).parents[1] / "configs" / "accelerate" / accelerate_config),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        str(Path(__file__).with_name("sharded_on_cpu.py")),
        "train",
        "--quiet",
    ]


def _fsdp_run(config_path: Path, *extra: str) -> subprocess.Popen:
    """A two-process FSDP2 run, in its own process group (a kill must reach the launcher's workers too)."""
    return subprocess.Popen(
        [*_sharded_launch("fsdp2.yaml"), "--config", str(config_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finished(process: subprocess.Popen) -> None:
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors[-3000:]


@pytest.fixture(scope="module")
def fsdp_runs(world, tmp_path_factory):
    """Two-process FSDP2 runs (full: straight, killed at a random step then resumed; LoRA: straight) beside one-process
    runs with the same effective batch (2 rows per step: 1 per process there, 2 here). Four launches, shared by the
    tests below because each costs tens of seconds."""
    import yaml

    root = tmp_path_factory.mktemp("fsdp")
    common = dict(max_steps=4, checkpoint_every=1, keep_last_checkpoints=10, latent_cache=str(root / "cache"))
    configs = {
        "full": config_for(
            world,
            root / "full",
            training_mode="full",
            batch_size=1,
            validation_every=4,
            validation_prompts=["a red ball"],
            validation_steps=1,
            held_out_loss_every=2,
            held_out_dataset_path=str(world / "data" / "metadata.csv"),
            **common,
        ),
        "lora": config_for(world, root / "lora", batch_size=1, **common),
    }
    paths = {name: root / f"{name}.yaml" for name in ("full", "lora", "killed")}
    for name, config in configs.items():
        paths[name].write_text(yaml.safe_dump(config.to_dict()))

    def variant(name: str, **overrides) -> TrainConfig:  # as the launches read it (YAML sorts the task weights)
        return TrainConfig.from_yaml(paths[name], {"validation_every": 0, "held_out_loss_every": 0, **overrides})

    paths["killed"].write_text(yaml.safe_dump(variant("full", save_path=str(root / "killed")).to_dict()))

    started = time.perf_counter()
    _finished(_fsdp_run(paths["full"]))  # encodes the shared cache first, so the kill below lands in training
    victim = _fsdp_run(paths["killed"])
    target = root / "killed" / f"checkpoint-{random.Random(os.getpid()).randint(1, 3):07d}"
    while not target.exists() and victim.poll() is None:
        time.sleep(0.002)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (root / "killed" / "final").exists(), "the run ended before it could be killed"
    _finished(_fsdp_run(paths["killed"], "--resume"))
    _finished(_fsdp_run(paths["lora"]))
    launches = time.perf_counter() - started
    for name in ("full", "lora"):  # the same effective batch in one process
        train(variant(name, batch_size=2, save_path=str(root / f"one_{name}")), progress=False)
    print(f"FSDP2 launches: {launches:.0f} s; one-process runs: {time.perf_counter() - started - launches:.0f} s")
    return root


def _transformer_weights(folder: Path) -> dict[str, torch.Tensor]:
    from unityvideo_diffusers import UnityVideoTransformer3DModel

    return UnityVideoTransformer3DModel.from_pretrained(folder).state_dict()


def _gathered_checkpoint(checkpoint: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The full weights in a sharded checkpoint, merged by torch's own converter (not by the trainer)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", scratch / "merged.pt")
    return torch.load(scratch / "merged.pt", weights_only=True)["model"]


# Adam moves every weight by about +-lr per step whatever its gradient's size, so where a gradient is near zero the
# order of a float sum (sharded reductions, a batch split in two) can flip the step: at most 2 lr per step in theory;
# 4 steps at lr 1e-3 agree to within 1e-4 here, while a different draw of rows or noise moves weights by ~1e-3.
SHARDED_TOLERANCE = 1e-4


def test_fsdp2_full_run_equals_one_process_and_exports_the_gathered_weights(fsdp_runs, world, tmp_path):
    sharded = _transformer_weights(fsdp_runs / "full" / "final" / "transformer")
    single = _transformer_weights(fsdp_runs / "one_full" / "final" / "transformer")
    assert sharded.keys() == single.keys()
    for name, tensor in single.items():
        assert (sharded[name] - tensor).abs().max() <= SHARDED_TOLERANCE, name
    ema = _transformer_weights(fsdp_runs / "full" / "final_ema" / "transformer")
    single_ema = _transformer_weights(fsdp_runs / "one_full" / "final_ema" / "transformer")
    assert all((ema[k] - v).abs().max() <= SHARDED_TOLERANCE for k, v in single_ema.items())
    assert any(not torch.equal(ema[k], sharded[k]) for k in ema)  # the average, not the last weights
    gathered = _gathered_checkpoint(fsdp_runs / "full" / "checkpoint-0000004", tmp_path)
    assert gathered.keys() == sharded.keys() and all(torch.equal(gathered[k], v) for k, v in sharded.items())

    # each rank held half of the weights and of Adam's two moments: its own slices, counted after the run
    held = json.loads((fsdp_runs / "full" / "rank_memory.json").read_text())
    total = sum(p.numel() for p in UnityVideoPipeline.from_pretrained(world / "model").transformer.parameters())
    assert [rank["rank"] for rank in held] == [0, 1] and sum(rank["parameters"] for rank in held) == total
    for rank in held:
        assert 0.45 * total <= rank["parameters"] <= 0.55 * total
        assert rank["optimizer_state"] == 2 * rank["trainable_parameters"] == 2 * rank["parameters"]

    # the sharded model also ran the held-out loss (every rank in the forward) and the validation videos
    log = [json.loads(line) for line in (fsdp_runs / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if "held_out" in record] == [0, 2, 4]
    written = sorted(p.name for p in (fsdp_runs / "full" / "validation" / "step-0000004").iterdir())
    assert written == ["00_depth.mp4", "00_rgb.mp4"]


def test_fsdp2_sigkill_and_resume_equals_the_uninterrupted_run(fsdp_runs):
    for export in ("final", "final_ema"):
        straight = _transformer_weights(fsdp_runs / "full" / export / "transformer")
        resumed = _transformer_weights(fsdp_runs / "killed" / export / "transformer")
        assert straight.keys() == resumed.keys()
        for name, tensor in straight.items():
            assert torch.allclose(resumed[name], tensor, rtol=1e-6, atol=1e-9), (export, name)


def test_fsdp2_lora_run_equals_one_process_and_loads(fsdp_runs, world, tmp_path):
    for export in ("final", "final_ema"):
        for file in ("pytorch_lora_weights.safetensors", "unityvideo_extra_weights.safetensors"):
            sharded = load_file(fsdp_runs / "lora" / export / file)
            single = load_file(fsdp_runs / "one_lora" / export / file)
            assert sharded.keys() == single.keys()
            assert all((sharded[k] - v).abs().max() <= SHARDED_TOLERANCE for k, v in single.items()), file
    held = json.loads((fsdp_runs / "lora" / "rank_memory.json").read_text())
    trainable = sum(rank["trainable_parameters"] for rank in held)
    assert all(0.45 * trainable <= rank["trainable_parameters"] <= 0.55 * trainable for rank in held)
    assert all(rank["optimizer_state"] == 2 * rank["trainable_parameters"] for rank in held)

    pipe = UnityVideoPipeline.from_pretrained(world / "model")
    load_trained_lora(pipe, fsdp_runs / "lora" / "final")
    gathered = _gathered_checkpoint(fsdp_runs / "lora" / "checkpoint-0000004", tmp_path)
    loaded = pipe.transformer.state_dict()
    trained = [k for k in gathered if "lora_" in k or k.startswith(("control_encoder.", "modality_proj_out"))]
    assert trained
    for name in trained:
        assert torch.equal(loaded[name.replace(".default.", ".default_0.")], gathered[name]), name


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed (pip install deepspeed; it runs here on its CPU accelerator over gloo)",
)
def test_deepspeed_zero2_and_zero3_runs_equal_one_process(fsdp_runs, tmp_path):
    """The FSDP2 full run's config, on `joint` steps only, under ZeRO-2 and ZeRO-3 (no EMA: the trainer keeps none
    under DeepSpeed): the same final weights as a one-process run, and ZeRO's slices of Adam's moments (half each of
    2 x the parameters). Joint steps use every parameter: DeepSpeed also steps the ones a step leaves without a
    gradient (a control step's modality head), with a zero gradient, where torch's AdamW leaves them be."""
    import yaml

    def variant(**overrides) -> TrainConfig:
        overrides = {"task": "joint", "ema_decay": 0.0, "validation_every": 0, "held_out_loss_every": 0, **overrides}
        return TrainConfig.from_yaml(fsdp_runs / "full.yaml", overrides)

    train(variant(batch_size=2, save_path=str(tmp_path / "one")), progress=False)
    single = _transformer_weights(tmp_path / "one" / "final" / "transformer")
    total = sum(v.numel() for v in single.values())
    for stage in (2, 3):
        save = tmp_path / f"zero{stage}"
        (tmp_path / f"zero{stage}.yaml").write_text(yaml.safe_dump(variant(save_path=str(save)).to_dict()))
        command = [*_sharded_launch(f"deepspeed_zero{stage}.yaml"), "--config", str(tmp_path / f"zero{stage}.yaml")]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        sharded = _transformer_weights(save / "final" / "transformer")
        assert all((sharded[k] - v).abs().max() <= SHARDED_TOLERANCE for k, v in single.items()), stage
        held = json.loads((save / "rank_memory.json").read_text())
        assert [rank["optimizer_state"] for rank in held] == [total, total], stage


def test_sharding_refusals_come_before_loading(fsdp_runs, world, tmp_path, monkeypatch):
    """A sharding config that names no block of the model, a sharded checkpoint resumed with another number of
    processes, a DeepSpeed config without DeepSpeed: each a ConfigError that says what to do."""
    import importlib.util
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from unityvideo_diffusers.training.sharding import check_resumable, check_sharding_plan

    def accelerator(num_processes=2, wrap=("UnityVideoTransformerBlock",), kind=DistributedType.FSDP):
        plugin = SimpleNamespace(transformer_cls_names_to_wrap=list(wrap))
        return SimpleNamespace(
            distributed_type=kind,
            num_processes=num_processes,
            state=SimpleNamespace(fsdp_plugin=plugin),
        )

    config = config_for(world, tmp_path / "plan")
    check_sharding_plan(accelerator(), config)
    with pytest.raises(ConfigError, match="set fsdp_transformer_layer_cls_to_wrap to UnityVideoTransformerBlock"):
        check_sharding_plan(accelerator(wrap=("WanTransformerBlock",)), config)
    with pytest.raises(ConfigError, match="Under DeepSpeed this trainer keeps no EMA: set ema_decay to 0"):
        check_sharding_plan(accelerator(kind=DistributedType.DEEPSPEED), config)
    checkpoint = fsdp_runs / "full" / "checkpoint-0000004"
    check_resumable(accelerator(), checkpoint)
    with pytest.raises(ConfigError, match="written by 2 process\\(es\\) under FSDP, and this run has 4 under FSDP"):
        check_resumable(accelerator(num_processes=4), checkpoint)
    unsharded = SimpleNamespace(distributed_type=DistributedType.NO, num_processes=1)
    with pytest.raises(ConfigError, match="Resume with the same accelerate config and number of processes"):
        check_resumable(unsharded, checkpoint)

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="asks for DeepSpeed .* the `deepspeed` package is not installed"):
        train(config_for(world, tmp_path / "deepspeed", max_steps=1), progress=False)
    assert not (tmp_path / "deepspeed" / "latent_cache").exists()
