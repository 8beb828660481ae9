"""The `unityvideo` command as a user runs it: subprocesses on a tiny model folder, checking the files written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from unityvideo_diffusers import UnityVideoPipeline
from unityvideo_diffusers.testing import tiny_pipeline_components
from unityvideo_diffusers.video_io import load_frames


SMALL = ["--height", "64", "--width", "64", "--steps", "2"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "model"
    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(folder)
    return folder


def unityvideo(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "unityvideo_diffusers", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_generate_control_estimate(model, tmp_path):
    result = unityvideo(
        "generate",
        "a red ball",
        "--model",
        model,
        "--modality",
        "depth",
        "--frames",
        9,
        *SMALL,
        "--output",
        tmp_path / "gen.mp4",
        "--seed",
        3,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(load_frames(tmp_path / "gen.mp4")) == 9 and len(load_frames(tmp_path / "gen_depth.mp4")) == 9
    record = json.loads((tmp_path / "gen.json").read_text())
    assert (
        record["settings"]["seed"] == 3
        and record["settings"]["prompt"] == "a red ball"
        and record["seconds"]["total"] > 0
    )

    result = unityvideo(
        "control",
        "a cube",
        "--control-video",
        tmp_path / "gen_depth.mp4",
        "--modality",
        "depth",
        "--model",
        model,
        *SMALL,
        "--output",
        tmp_path / "control.gif",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(load_frames(tmp_path / "control.gif")) == 9

    result = unityvideo(
        "video2flow",
        tmp_path / "gen.mp4",
        "--modality",
        "flow",
        "--model",
        model,
        *SMALL,
        "--output",
        tmp_path / "flow",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "flow").glob("*.png"))) == 9
    assert np.load(tmp_path / "flow_flow.npz")["flow"].shape == (9, 64, 64, 2)


def test_control_image_and_yaml_config(model, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "still.png")
    (tmp_path / "job.yaml").write_text(
        f"model: {model}\nmodality: segmentation\nframes: 5\nheight: 64\nwidth: 64\nsteps: 1\n"
    )
    result = unityvideo(
        "control",
        "a ball",
        "--config",
        tmp_path / "job.yaml",
        "--control-image",
        tmp_path / "still.png",
        "--steps",
        2,
        "--output",
        tmp_path / "still.mp4",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "still.json").read_text())
    assert (
        record["settings"]["steps"] == 2 and record["settings"]["modality"] == "segmentation"
    )  # flags override the file
    assert len(load_frames(tmp_path / "still.mp4")) == 5


def test_info(model):
    result = unityvideo("info", model)
    assert result.returncode == 0 and "modalities: depth, densepose, raft, segmentation, skeleton" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "x", "--frames", "8"], "frames must be 4k\\+1"),
        (["generate", "x", "--modality", "normals"], "no modality 'normals'"),
        (["estimate", "missing.mp4", "--modality", "depth"], "--video missing.mp4 does not exist"),
        (["control", "x", "--modality", "depth"], "control needs control_video or control_image"),
        (["generate", "x", "--steps", "0"], "steps must be a positive integer"),
        (["info", "nowhere"], "nowhere is not a folder"),
    ],
)
def test_bad_input_is_one_line(model, tmp_path, monkeypatch, capsys, args, message):
    """In-process for speed (the subprocess path is the same `main`, checked by the YAML test below)."""
    from unityvideo_diffusers.cli import main

    monkeypatch.chdir(tmp_path)
    extra = ["--model", str(model), "--output", str(tmp_path / "o.mp4")] if args[0] != "info" else []
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *extra])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]  # above it only progress bars, if anything
    assert "Traceback" not in error and last.startswith("unityvideo ") and re.search(message, last), error


def test_unknown_yaml_key_names_the_nearest(model, tmp_path):
    (tmp_path / "job.yaml").write_text("gudance_scale: 3\n")
    result = unityvideo("generate", "x", "--model", model, "--config", tmp_path / "job.yaml")
    assert (
        result.returncode == 2
        and "Unknown key 'gudance_scale'" in result.stderr
        and "did you mean 'guidance_scale'" in result.stderr
    )


def test_restyle(model, tmp_path):
    from unityvideo_diffusers.video_io import save_video

    save_video(np.random.default_rng(0).random((9, 64, 64, 3)), tmp_path / "clip.mp4")
    result = unityvideo(
        "restyle", tmp_path / "clip.mp4", "a green cube", "--model", model, *SMALL, "--output", tmp_path / "new.mp4"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(load_frames(tmp_path / "new.mp4")) == len(load_frames(tmp_path / "new_depth.mp4")) == 9


class FakeHub:
    """Records what would be sent to the Hub."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id, kwargs))
        return type("Repo", (), {"repo_id": repo_id})()

    def upload_folder(self, **kwargs):
        folder = kwargs["folder_path"]
        files = sorted(
            str(p.relative_to(folder)) for p in __import__("pathlib").Path(folder).rglob("*") if p.is_file()
        )
        FakeHub.calls.append(("upload_folder", kwargs["repo_id"], files, open(f"{folder}/README.md").read()))


@pytest.fixture
def fake_hub(monkeypatch):
    from unityvideo_diffusers import hub

    FakeHub.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHub)
    return FakeHub


def test_push_command_uploads_a_complete_folder_with_a_card(model, fake_hub, tmp_path, capsys):
    import shutil

    from unityvideo_diffusers.cli import main

    folder = tmp_path / "to_push"
    shutil.copytree(model, folder)
    assert main(["push", str(folder), "--repo-id", "me/my-unityvideo", "--private"]) == 0
    (_, repo, options), (_, uploaded_repo, files, card) = fake_hub.calls
    assert repo == uploaded_repo == "me/my-unityvideo" and options["private"] is True
    assert {"model_index.json", "README.md", "transformer/config.json", "vae/config.json"} <= set(files)
    front_matter = card.split("---")[1]
    for line in (
        "license: apache-2.0",
        "pipeline_tag: text-to-video",
        "base_model: KlingTeam/UnityVideo",
        "- depth",
        "- unityvideo",
    ):
        assert line in front_matter
    assert 'UnityVideoPipeline.from_pretrained("me/my-unityvideo"' in card
    with pytest.raises(SystemExit):
        main(["push", str(folder), "--repo-id", "not-a-repo-id"])
    assert "--repo-id must look like owner/name" in capsys.readouterr().err


def test_pipeline_push_to_hub(fake_hub):
    pipe = UnityVideoPipeline(**tiny_pipeline_components())
    pipe.push_to_hub("me/tiny")
    upload = fake_hub.calls[-1]
    assert (
        upload[1] == "me/tiny"
        and "README.md" in upload[2]
        and "transformer/diffusion_pytorch_model.safetensors" in upload[2]
    )


def test_from_pretrained_reads_the_hub_cache_offline(model, tmp_path):
    """A Hub-cache-shaped folder (as a download leaves it) loads by repo id with HF_HUB_OFFLINE=1."""
    import os
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--me--tiny-unityvideo" / "snapshots" / ("0" * 40)
    shutil.copytree(model, snapshot)
    (cache / "models--me--tiny-unityvideo" / "refs").mkdir()
    (cache / "models--me--tiny-unityvideo" / "refs" / "main").write_text("0" * 40)
    script = (
        "from unityvideo_diffusers import UnityVideoPipeline; "
        "p = UnityVideoPipeline.from_pretrained('me/tiny-unityvideo'); print(type(p.transformer).__name__)"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("UnityVideoTransformer3DModel")


def test_convert_then_push(fake_hub, tmp_path):
    from conftest import reference_for
    from safetensors.torch import save_file

    from unityvideo_diffusers.cli import main
    from unityvideo_diffusers.testing import TINY_TRANSFORMER

    save_file(
        {k: v.contiguous() for k, v in reference_for(TINY_TRANSFORMER).state_dict().items()},
        tmp_path / "r.safetensors",
    )
    (tmp_path / "config.json").write_text(json.dumps(TINY_TRANSFORMER))
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(tmp_path / "r.safetensors"),
                "--output",
                str(tmp_path / "out"),
                "--transformer-config",
                str(tmp_path / "config.json"),
                "--quiet",
                "--push-to",
                "me/converted",
            ]
        )
        == 0
    )
    assert fake_hub.calls[0][2]["private"] is True and "transformer/config.json" in fake_hub.calls[1][2]


def test_every_command_reads_a_config(model, tmp_path, capsys):
    from unityvideo_diffusers.cli import main

    (tmp_path / "info.yaml").write_text(f"model: {model}\n")
    assert main(["info", "--config", str(tmp_path / "info.yaml")]) == 0
    assert "modalities:" in capsys.readouterr().out
    (tmp_path / "push.yaml").write_text("repo_id: me/x\nprivat: true\n")
    with pytest.raises(SystemExit):
        main(["push", str(model), "--config", str(tmp_path / "push.yaml")])
    error = capsys.readouterr().err
    assert "Unknown key 'privat'" in error and "did you mean 'private'" in error
    with pytest.raises(SystemExit):
        main(["convert", "--output", str(tmp_path / "x")])
    assert "missing --checkpoint (a flag or a --config key)" in capsys.readouterr().err


def test_scheduler_choices_keep_the_folder_shift():
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from unityvideo_diffusers.schedulers import scheduler_by_name

    folder = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=2.0)
    assert scheduler_by_name("euler", folder).config.shift == 2.0
    assert scheduler_by_name("dpm", folder).config.flow_shift == 2.0
    assert scheduler_by_name("unipc", folder).config.flow_shift == 2.0
    assert scheduler_by_name("unipc", FlowMatchEulerDiscreteScheduler(shift=3.0)).config.flow_shift == 3.0


def test_scheduler_choices_take_another_shift_and_refuse_bad_ones(tmp_path, capsys):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from unityvideo_diffusers.cli import main
    from unityvideo_diffusers.schedulers import scheduler_by_name

    folder = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    for name in ("euler", "unipc", "dpm"):
        chosen = scheduler_by_name(name, folder, 5.0)
        assert chosen.config.get("flow_shift", chosen.config.get("shift")) == 5.0
    reshifted = scheduler_by_name("default", folder, 5.0)
    assert type(reshifted) is UniPCMultistepScheduler and reshifted.config.flow_shift == 5.0
    assert reshifted.config.solver_order == folder.config.solver_order and folder.config.flow_shift == 3.0
    assert scheduler_by_name("default", FlowMatchEulerDiscreteScheduler(shift=3.0), 7.0).config.shift == 7.0
    for name, shift, message in (
        ("reference", 5.0, "unshifted by design"),
        ("unipc", 0.0, "positive number"),
        ("unipc", -2.0, "positive number"),
        ("dpm", float("inf"), "positive number"),
        ("euler", True, "positive number"),
    ):
        with pytest.raises(ValueError, match=message):
            scheduler_by_name(name, folder, shift)
    # the command refuses before it loads or samples anything
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(tmp_path), "--schedulers", "reference", "--flow-shift", "5"])
    assert "unshifted by design" in capsys.readouterr().err
