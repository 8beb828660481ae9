"""The demo-model recipe end to end at a toy budget: it produces a pipeline folder the pipelines and CLI load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from unityvideo_diffusers import UnityVideoPerceptionPipeline
from unityvideo_diffusers.data.demo_model import build


def test_recipe_at_a_toy_budget(tmp_path):
    model = build(tmp_path / "demo", minutes=0.6, train_clips=4, eval_clips=1, log=lambda *_: None)
    recipe = json.loads((model / "recipe.json").read_text())
    assert recipe["vae_steps"] >= 1 and recipe["transformer_steps"] >= 10
    assert set(recipe["vae_psnr_db"]) == {"rgb", "depth", "raft", "segmentation", "normal", "edge"}
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert size < 25 * 2**20
    pipe = UnityVideoPerceptionPipeline.from_pretrained(model)
    assert list(pipe.transformer.config.modalities) == ["depth", "raft", "segmentation", "normal", "edge"]
    assert pipe.vae.config.scale_factor_spatial == 8 and len(pipe.vae.config.latents_mean) == 16
    clip = tmp_path / "demo.work" / "shapesworld" / "eval" / "00000" / "rgb"
    out = pipe(video=str(clip), modality="normal", height=64, width=64, num_inference_steps=2)
    assert out.modality_frames.shape == (1, 17, 64, 64, 3)

    # the joint vs single-task comparison runs on the recipe's work folder
    script = Path(__file__).parents[1] / "benchmarks" / "joint_vs_single_task.py"
    subprocess.run([sys.executable, str(script), "--work", str(tmp_path / "demo.work"), "--steps", "3", "--held-out-rows", "1",
                    "--eval-clips", "1", "--output", str(tmp_path / "compare.json")], check=True, capture_output=True)  # fmt: skip
    compared = json.loads((tmp_path / "compare.json").read_text())
    for run in ("joint", "single"):
        assert [step for step, _ in compared[run]["held_out_depth_loss"]] == [0, 1, 2, 3]
        assert 0 <= compared[run]["depth_delta1"] <= 1
