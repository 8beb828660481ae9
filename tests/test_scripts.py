"""The documented config-file scripts work as written, and do what a user means with values the model cannot use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unityvideo_diffusers import UnityVideoPipeline
from unityvideo_diffusers.testing import tiny_pipeline_components
from unityvideo_diffusers.video_io import load_frames


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripts") / "model"
    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(folder)
    return folder


def test_documented_configs_parse():
    sys.path.insert(0, str(ROOT / "scripts"))
    from inference import settings_from

    jobs = {}
    for path in sorted((ROOT / "configs" / "inference").glob("*.yaml")):
        job, settings, notes = settings_from(yaml.safe_load(path.read_text()), None)
        jobs[path.stem] = job
        assert notes == [] and settings["model"] and settings["output"]
    assert jobs == {"control_config": "control", "estimate_config": "estimate", "text2video_config": "generate"}


def test_inference_script_means_what_the_user_meant(model, tmp_path):
    config = dict(
        model_path=str(model),
        text_prompt="a red ball",
        video_length=8,
        resolution="70x60",
        num_inference_steps=2,
        gradient_checkpointing=True,
        output_path=str(tmp_path / "out.mp4"),
        modality="depth",
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "inference.py"),
            "--config",
            str(tmp_path / "config.yaml"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for note in (
        "video_length 8 is not 4k+1; using 9",
        "height 60 is not a multiple of 32; using 64",
        "width 70 is not a multiple of 32; using 64",
        "gradient_checkpointing is a training setting; ignored",
    ):
        assert note in result.stdout
    frames = load_frames(tmp_path / "out.mp4")
    assert len(frames) == 9 and frames[0].size == (64, 64) and (tmp_path / "out_depth.mp4").exists()


def test_inference_script_names_unknown_keys(tmp_path):
    (tmp_path / "config.yaml").write_text("model_path: x\ntext_promt: hi\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "inference.py"), "--config", str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Unknown key 'text_promt'; did you mean 'text_prompt'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_documented_training_config_is_valid():
    from unityvideo_diffusers.training import ConfigError, TrainConfig

    with pytest.raises(ConfigError) as error:  # only the paths are placeholders
        TrainConfig.from_yaml(ROOT / "configs" / "train" / "finetune_config.yaml")
    assert str(error.value).count("\n  - ") == 2 and "dataset_path data/metadata.csv is not a file" in str(error.value)
    assert "model_path unityvideo-5b: no such folder, and not a Hub id" in str(error.value)
