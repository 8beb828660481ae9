"""The small breaks a user meets in the first hour, each checked for its whole class: numbers as written in config
files and on the command line, network failures, `info --model`, library banners in errors, the size rule, the
job names and model paths of configs copied from the UnityVideo article, and the model card of a push."""

from __future__ import annotations

import decimal
import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import httpx2
import numpy as np
import pytest

from unityvideo_diffusers import DEMO_MODEL, UnityVideoPipeline, hub
from unityvideo_diffusers.cli import NUMERIC_OPTIONS, _job_settings, build_parser, main
from unityvideo_diffusers.tasks import resolve_task
from unityvideo_diffusers.testing import tiny_pipeline_components
from unityvideo_diffusers.training import ConfigError, TrainConfig


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("first_hour") / "model"
    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "metadata.csv"
    path.write_text("video,prompt,depth\nclip,a ball,clip_depth\n")
    return path


def exponent_form(value) -> str:
    """`value` as YAML 1.1 reads as a string: digits, `e`, exponent, no dot (0.01 -> "1e-2", 32 -> "32e0")."""
    sign, digits, exponent = decimal.Decimal(str(value)).normalize().as_tuple()
    return f"{'-' if sign else ''}{''.join(map(str, digits))}e{exponent}"


def numeric_fields() -> dict[str, type]:
    fields = {}
    for name, kind in typing.get_type_hints(TrainConfig).items():
        scalar = [k for k in typing.get_args(kind) or (kind,) if k is not type(None)][0]
        if scalar in (int, float):
            fields[name] = scalar
    return fields


FIELD_VALUES = {"max_steps": 300, "max_minutes": 2.5, "max_sequence_length": 64}  # the fields whose default is None


@pytest.mark.parametrize("name", sorted(numeric_fields()))
def test_every_numeric_training_setting_reads_as_written(name, model, dataset, tmp_path):
    """`learning_rate: 1e-5` (a string to YAML 1.1) in a file, and with --set, is the number; a value of the wrong
    type is named, with no TypeError."""
    value = FIELD_VALUES.get(name, getattr(TrainConfig, name))
    config = tmp_path / "train.yaml"
    config.write_text(f"model_path: {model}\ndataset_path: {dataset}\n{name}: {exponent_form(value)}\n")
    parsed = getattr(TrainConfig.from_yaml(config), name)
    assert parsed == value and type(parsed) is numeric_fields()[name]
    for wrong in ("abc", [1], True):
        with pytest.raises(ConfigError, match=f"{name} must be a (whole )?number"):
            TrainConfig.from_yaml(config, {name: wrong})


def test_the_articles_training_config_as_written(dataset, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        "model_path: ./pretrained_models\n"
        f"dataset_path: {dataset}\n"
        "task: text2video\n"
        "learning_rate: 1e-5\n"
        "weight_decay: 1e-2\n"
        "task_weights: {text2video: 1e0}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config), "--set", "learning_rate=1e-3", "--set", "max_steps=1e2"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    problems = [line for line in error.splitlines() if line.strip().startswith("- ")]
    assert problems == ["  - model_path ./pretrained_models: no such folder, and not a Hub id (owner/name)"], error
    assert resolve_task("text2video").name == resolve_task("t2v").name == "joint"


def job_settings(job: str, *args: str) -> dict:
    return _job_settings(job, build_parser().parse_args([job, *args]))


@pytest.mark.parametrize("name", sorted(NUMERIC_OPTIONS))
def test_every_numeric_job_option_reads_as_written(name, model, tmp_path):
    value = {"frames": 9, "height": 64, "width": 64, "guidance_scale": 0.5, "lora_scale": 0.75}.get(name, 3)
    config = tmp_path / "job.yaml"
    config.write_text(f"{name}: {exponent_form(value)}\n")
    settings = job_settings("generate", "x", "--model", str(model), "--config", str(config))
    assert settings[name] == value and type(settings[name]) is (int if NUMERIC_OPTIONS[name] else float)
    config.write_text(f"{name}: abc\n")
    with pytest.raises(ValueError, match=f"^{name} must be a (whole )?number, got 'abc'"):
        job_settings("generate", "x", "--model", str(model), "--config", str(config))


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Every request of huggingface_hub fails as it does with no network."""

    def refuse(self, request, **kwargs):
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    monkeypatch.setattr(httpx2.Client, "send", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def one_line_error(capsys, argv: list[str], command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "Traceback" not in error and last.startswith(f"unityvideo {command}: error:")
    return last


def test_network_failures_are_one_line(unreachable_hub, model, tmp_path, capsys):
    from conftest import reference_for
    from safetensors.torch import save_file

    from unityvideo_diffusers.testing import TINY_TRANSFORMER

    shutil.copytree(model, tmp_path / "folder")
    last = one_line_error(capsys, ["push", str(tmp_path / "folder"), "--repo-id", "me/x"], "push")
    assert "cannot reach the Hugging Face Hub" in last

    save_file(
        {k: v.contiguous() for k, v in reference_for(TINY_TRANSFORMER).state_dict().items()},
        tmp_path / "r.safetensors",
    )
    (tmp_path / "config.json").write_text(json.dumps(TINY_TRANSFORMER))
    convert = ["convert", "--checkpoint", str(tmp_path / "r.safetensors"), "--output", str(tmp_path / "out")]
    convert += ["--transformer-config", str(tmp_path / "config.json"), "--quiet", "--push-to", "me/converted"]
    assert "cannot reach the Hugging Face Hub" in one_line_error(capsys, convert, "convert")

    last = one_line_error(
        capsys, ["generate", "x", "--model", "me/unreachable", "--output", str(tmp_path / "o")], "generate"
    )
    assert "me/unreachable" in last


def test_info_takes_model_like_every_command(model, capsys):
    assert main(["info", "--model", str(model)]) == 0
    assert "modalities: depth" in capsys.readouterr().out
    assert "missing the model folder" in one_line_error(capsys, ["info"], "info")


def test_an_unreadable_video_is_one_line_without_ffmpegs_banner(model, tmp_path, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    argv = ["estimate", str(tmp_path / "broken.mp4"), "--modality", "depth", "--model", str(model)]
    last = one_line_error(capsys, [*argv, "--output", str(tmp_path / "o.mp4")], "estimate")
    assert "Cannot read the video" in last and "Invalid data found" in last
    error = capsys.readouterr().err
    assert "ffmpeg version" not in last + error and "configuration:" not in last + error


def test_one_size_rule_for_the_pipelines_the_cli_and_training(model, dataset, capsys):
    """The size step is the VAE's factor times the patch: 32 for a Wan2.2-VAE model, 16 for the demo (VAE 8x)."""
    for folder, step, vae in ((model, 32, 16), (DEMO_MODEL, 16, 8)):
        message = f"`height` must be a positive multiple of {step} (VAE {vae}x times patch 2), got {step + 8}."
        with pytest.raises(ValueError) as cli_error:
            job_settings("generate", "x", "--model", str(folder), "--height", str(step + 8))
        pipe = UnityVideoPipeline.from_pretrained(folder)
        with pytest.raises(ValueError) as pipeline_error:
            pipe("x", height=step + 8, width=64, num_frames=5, num_inference_steps=1)
        assert str(cli_error.value) == str(pipeline_error.value) == message
        assert job_settings("generate", "x", "--model", str(folder), "--height", str(3 * step))["height"] == 3 * step
        config = dict(model_path=str(folder), dataset_path=str(dataset), height=3 * step)
        assert TrainConfig.from_dict(config).height == 3 * step
        with pytest.raises(ConfigError, match=f"height. must be a positive multiple of {step}"):
            TrainConfig.from_dict({**config, "height": step + 8})


def inference_settings_from():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from inference import KEYS, settings_from
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return KEYS, settings_from


def test_inference_script_numbers_read_as_written():
    keys, settings_from = inference_settings_from()
    numeric_keys = {key: setting for key, setting in keys.items() if setting in NUMERIC_OPTIONS}
    assert numeric_keys.keys() == {"guidance_scale", "seed", "num_inference_steps", "fps"}
    for key, setting in numeric_keys.items():
        _, settings, _ = settings_from({key: 3e0}, None)
        assert settings[setting] == 3 and type(settings[setting]) is (int if NUMERIC_OPTIONS[setting] else float)
        with pytest.raises(ValueError, match=f"^{key} must be a (whole )?number, got 'abc'"):
            settings_from({key: "abc"}, None)
    sized = settings_from({"video_length": 33e0, "resolution": "448x256"}, None)[1]
    assert sized == dict(frames=33, height=256, width=448)
    for key in ("video_length", "resolution"):
        with pytest.raises(ValueError, match=f"^{key} must be"):
            settings_from({key: "abc"}, None)


def test_inference_script_reads_the_articles_task_names(model, tmp_path):
    _, settings_from = inference_settings_from()
    assert settings_from({"task": "text2video", "text_prompt": "a ball"}, None)[0] == "generate"
    video = {"video_path": "clip.mp4", "estimate_type": "depth"}
    assert settings_from({"task": "video2flow", **video}, None)[0] == "estimate"
    with pytest.raises(ValueError, match="task 'text2video' is the generate job"):
        settings_from({"task": "text2video", **video}, None)
    config = tmp_path / "inference.yaml"
    config.write_text("task: text2video\nmodel_path: ./pretrained_models\ntext_prompt: a ball\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "inference.py"), "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model_path ./pretrained_models: no such folder, and not a Hub id" in result.stderr, result.stderr


def test_save_pretrained_push_to_hub_writes_the_unityvideo_card(monkeypatch, tmp_path):
    uploads = []

    class FakeHub:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, folder_path, **kwargs):
            uploads.append((folder_path, (Path(folder_path) / "README.md").read_text()))

    monkeypatch.setattr(hub, "HfApi", FakeHub)
    pipe = UnityVideoPipeline(**tiny_pipeline_components())
    pipe.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="me/tiny")
    pipe.push_to_hub("me/tiny")
    (saved_folder, saved_card), (_, pushed_card) = uploads
    assert Path(saved_folder) == tmp_path / "saved" and (tmp_path / "saved" / "README.md").read_text() == saved_card
    for card in (saved_card, pushed_card):
        assert "base_model: KlingTeam/UnityVideo" in card and 'UnityVideoPipeline.from_pretrained("me/tiny"' in card
    assert np.all([(tmp_path / "saved" / name).exists() for name in ("model_index.json", "transformer")])
