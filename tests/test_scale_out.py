"""Work shared among the processes of `accelerate launch` on two CPU processes (gloo): encoding the training data,
generating from a file of prompts, estimating over a folder of videos. The files must not depend on the number of
processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from unityvideo_diffusers import UnityVideoPipeline
from unityvideo_diffusers.testing import tiny_pipeline_components
from unityvideo_diffusers.training.data import LatentCache, read_metadata
from unityvideo_diffusers.video_io import save_video


def launch(processes: int, *command: str, wait: bool = True):
    """`accelerate launch` of `python -m unityvideo_diffusers ...` on CPU processes of one thread each, in its own
    process group so that a kill reaches the workers. One thread, whatever the count of processes: on a CPU, how a
    float sum is split among threads changes its last bits (on GPUs each process computes as one alone would)."""
    arguments = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    arguments += ["--multi_gpu"] if processes > 1 else []
    arguments += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    arguments += ["--num_cpu_threads_per_process", "1", "-m", "unityvideo_diffusers", *command]
    process = subprocess.Popen(
        arguments,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
    )
    if wait:
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors[-3000:]
    return process


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale_out") / "model"
    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(folder)
    return folder


def files_of(folder: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in suffixes}


def test_generate_and_estimate_split_among_processes_write_the_same_files(model, tmp_path):
    """Five prompts on one process and on two: the same videos byte for byte, each prompt with seed + its index; then
    the same for `estimate` over the folder of those videos (the modality videos and the decoded numbers)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na blue cube\n\na green cone\na ball and a cube\na white sphere\n")
    small = ["--frames", "5", "--height", "64", "--width", "64", "--steps", "2", "--seed", "7", "--model", str(model)]
    for processes in (1, 2):
        launch(processes, "generate", "--prompts", str(prompts), *small, "--output", str(tmp_path / f"gen{processes}"))
    one, two = files_of(tmp_path / "gen1", (".mp4",)), files_of(tmp_path / "gen2", (".mp4",))
    assert sorted(one) == [f"{i:05d}.mp4" for i in range(5)] and one == two
    assert len(set(one.values())) == 5  # five prompts, five seeds: five different videos
    records = [json.loads((tmp_path / "gen2" / f"{i:05d}.json").read_text())["settings"] for i in range(5)]
    assert [(r["prompt"], r["seed"]) for r in records] == [
        ("a red ball", 7),
        ("a blue cube", 8),
        ("a green cone", 9),
        ("a ball and a cube", 10),
        ("a white sphere", 11),
    ]

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in list(one)[:3]:
        (videos / name).write_bytes(one[name])
    small = [*small[:-2], "--modality", "depth", "--model", str(model)]
    for processes in (1, 2):
        launch(processes, "estimate", "--videos", str(videos), *small, "--output", str(tmp_path / f"depth{processes}"))
    one, two = (files_of(tmp_path / f"depth{n}", (".mp4", ".npz")) for n in (1, 2))
    assert sorted(one) == sorted(f"{i:05d}_{i:05d}{suffix}" for i in range(3) for suffix in (".mp4", "_disparity.npz"))
    assert one == two


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["generate", "--prompts", "prompts.txt", "--output", "x.mp4"],
            "--output is a folder when running many prompts",
        ),
        (["generate", "a ball", "--prompts", "prompts.txt"], "Give --prompts or one prompt, not both"),
        (["generate", "--prompts", "nothing.txt"], "--prompts nothing.txt is not a file"),
        (["estimate", "--videos", ".", "--modality", "depth"], "holds no videos"),
    ],
)
def test_many_items_refuse_bad_input_before_loading(model, tmp_path, monkeypatch, capsys, args, message):
    """In-process, as tests/test_cli.py's bad input: one line, exit code 2."""
    from unityvideo_diffusers.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a ball\n")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--model", str(model)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error and message in error.strip().splitlines()[-1]


def test_encoding_split_among_processes_resumes_after_a_kill(model, tmp_path):
    """Two processes encode their shares into one cache; killed part-way and restarted, they encode only the rows
    not yet written, and the cache ends identical, file for file, to one built by one process."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    with open(tmp_path / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "depth"])
        writer.writeheader()
        for i in range(12):
            save_video(rng.random((17, 96, 96, 3)), data / f"rgb{i}.mp4")
            save_video(rng.random((17, 96, 96, 3)), data / f"depth{i}.mp4")
            writer.writerow({"video": f"data/rgb{i}.mp4", "prompt": f"clip {i}", "depth": f"data/depth{i}.mp4"})
            if i == 3:  # a second caption of clip 3, and a row whose video is missing
                writer.writerow({"video": "data/rgb3.mp4", "prompt": "the same clip", "depth": "data/depth3.mp4"})
                writer.writerow({"video": "data/gone.mp4", "prompt": "gone", "depth": ""})
    size = dict(num_frames=17, height=96, width=96)
    config = tmp_path / "encode.yaml"
    config.write_text(
        yaml.safe_dump(
            dict(
                model_path=str(model),
                dataset_path=str(tmp_path / "metadata.csv"),
                save_path=str(tmp_path / "run"),
                **size,
            )
        )
    )
    cache = tmp_path / "run" / "latent_cache"
    command = ("train", "--config", str(config), "--encode-only", "--quiet")
    victim = launch(2, *command, wait=False)
    while len(list(cache.glob("*.safetensors"))) < 4 and victim.poll() is None:
        time.sleep(0.002)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (cache / "index.json").exists(), "the encoding ended before it could be killed"
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("[0-9]*.safetensors")}
    launch(2, *command)
    kept = {name: ((cache / name).stat().st_ino, (cache / name).stat().st_mtime_ns) for name in written}
    assert kept == written  # what was written before the kill was not encoded again (a rewrite is a new file)

    reference, threads = LatentCache(tmp_path / "one_process"), torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process
    try:
        with torch.no_grad():
            pipe = UnityVideoPipeline.from_pretrained(model)
            reference.build(
                read_metadata(tmp_path / "metadata.csv", ["depth"]),
                pipe,
                ["depth"],
                **size,
                max_sequence_length=pipe.text_length(None),
                progress=False,
            )
    finally:
        torch.set_num_threads(threads)
    split = {p.name: p.read_bytes() for p in sorted(cache.iterdir()) if not p.name.startswith(".")}
    assert split == {p.name: p.read_bytes() for p in sorted(reference.folder.iterdir())}
    index = json.loads((cache / "index.json").read_text())
    assert index["usable"] == [i for i in range(14) if i != 5] and list(index["skipped"]) == ["5"]
