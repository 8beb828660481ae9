"""The demo-model recipe end to end at a toy budget: it produces a pipeline folder the pipelines and CLI load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from unityvideo_diffusers import UnityVideoPerceptionPipeline
from unityvideo_diffusers.shapesworld.recipe import (
    STREAMS,
    VAE,
    build,
    clip_tensors,
    fit_tokenizer,
    local_text_encoder,
    object_weights,
)
from unityvideo_diffusers.shapesworld.world import WorldConfig, write_split


def test_recipe_at_a_toy_budget(tmp_path):
    model = build(tmp_path / "demo", minutes=0.6, train_clips=4, eval_clips=1, log=lambda *_: None)
    recipe = json.loads((model / "recipe.json").read_text())
    assert recipe["vae_steps"] >= 1 and recipe["transformer_steps"] >= 1 and recipe["finish_steps"] >= 1
    assert recipe["exported_from"] == "finish/final_ema"  # the finishing phase trained on from the main run's EMA
    finishing = json.loads((tmp_path / "demo.work" / "finish" / "train_config.json").read_text())
    assert finishing["model_path"].endswith("run/final_ema") and finishing["latent_cache"].endswith("run/latent_cache")
    assert set(recipe["vae_psnr_db"]) == {"rgb", "depth", "raft", "segmentation", "normal", "edge"}
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert size < 25 * 2**20
    pipe = UnityVideoPerceptionPipeline.from_pretrained(model)
    assert list(pipe.transformer.config.modalities) == ["depth", "raft", "segmentation", "normal", "edge"]
    assert pipe.vae.config.scale_factor_spatial == VAE["scale_factor_spatial"]
    assert len(pipe.vae.config.latents_mean) == pipe.vae.config.z_dim == pipe.transformer.config.in_channels
    clip = tmp_path / "demo.work" / "shapesworld" / "eval" / "00000" / "rgb"
    out = pipe(video=str(clip), modality="normal", height=64, width=64, num_inference_steps=2)
    assert out.modality_frames.shape == (1, 17, 64, 64, 3)

    # the joint vs single-task comparison runs on the recipe's work folder
    script = Path(__file__).parents[1] / "benchmarks" / "joint_vs_single_task.py"
    subprocess.run(
        [
            sys.executable,
            str(script),
            "--work",
            str(tmp_path / "demo.work"),
            "--steps",
            "3",
            "--held-out-rows",
            "1",
            "--eval-clips",
            "1",
            "--output",
            str(tmp_path / "compare.json"),
        ],
        check=True,
        capture_output=True,
    )
    compared = json.loads((tmp_path / "compare.json").read_text())
    for run in ("joint", "single"):
        assert [step for step, _ in compared[run]["held_out_depth_loss"]] == [0, 1, 2, 3]
        assert 0 <= compared[run]["depth_delta1"] <= 1


def test_vae_object_weights_cover_the_objects_and_zero_leaves_the_loss_unweighted(tmp_path):
    csv_path = write_split(tmp_path, "train", 2, seed=0, config=WorldConfig(frames=5))
    videos = clip_tensors(csv_path.parent, 5)
    weights = object_weights(videos, 10.0)
    assert len(weights) == len(videos) == 2 * len(STREAMS)
    for clip in range(2):
        labels = np.load(csv_path.parent / f"{clip:05d}" / "gt.npz")["labels"]
        weight = weights[clip * len(STREAMS)][0].numpy()
        assert weight.shape == labels.shape and set(np.unique(weight)) == {1.0, 11.0}
        assert (weight[labels > 0] == 11).all()  # every object pixel, plus a one-pixel rim
        assert (weight == 11).sum() < 2 * (labels > 0).sum() + 4 * labels.shape[0] * labels.shape[1]
        assert all(w is weights[clip * len(STREAMS)] for w in weights[clip * len(STREAMS) : (clip + 1) * len(STREAMS)])
    assert all((w == 1).all() for w in object_weights(videos, 0.0))


def test_the_text_encoder_tells_whose_word_is_whose():
    """With its neighbour heads a word's feature changes with the words beside it (a plain seeded UMT5 gives the
    same "ball" feature, cosine 1.000, in both prompts), yet a shape stays closer to itself than to another shape."""
    prompts = ["a red ball and a blue cube", "a blue ball and a red cube"]
    tokenizer = fit_tokenizer(prompts * 4)
    encoder = local_text_encoder(len(tokenizer), seed=0)

    def feature(prompt, word):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder(ids).last_hidden_state[0, tokenizer.convert_ids_to_tokens(ids[0]).index(word)]

    ball_across_the_swap = torch.cosine_similarity(feature(prompts[0], "Ġball"), feature(prompts[1], "Ġball"), dim=0)
    ball_against_cube = torch.cosine_similarity(feature(prompts[0], "Ġball"), feature(prompts[1], "Ġcube"), dim=0)
    assert ball_across_the_swap < 0.95 and ball_against_cube < ball_across_the_swap, (
        ball_across_the_swap,
        ball_against_cube,
    )
