"""Training data: the authors' metadata CSV, encoded once into a latent cache, then read without VAE or text encoder.

CSV columns: `video`, `prompt`, and one column per modality holding the path of that modality's visualisation video
(paths relative to the CSV's folder; an empty cell means the row lacks that modality). Every stream of a row is
sampled at the same frame indices. A row that cannot be used (missing file, unreadable video, too few frames) is
skipped and counted, never fatal.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..modalities import decode_segmentation
from ..video_io import cover_crop, load_frames, sample_indices
from .config import ConfigError, TrainConfig


@dataclass(frozen=True)
class Row:
    index: int
    video: Path
    prompt: str
    modalities: dict[str, Path]


def read_metadata(csv_path: str | os.PathLike, modalities: list[str]) -> list[Row]:
    """Rows of the CSV with paths resolved; raises if the `video` / `prompt` columns are missing."""
    csv_path = Path(csv_path)
    with csv_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        missing = {"video", "prompt"} - columns
        if missing:
            raise ValueError(f"{csv_path} lacks the column(s) {', '.join(sorted(missing))}; it has {sorted(columns)}.")
        rows = list(reader)

    def resolve(value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else csv_path.parent / path

    return [
        Row(
            index=index,
            video=resolve(row["video"]),
            prompt=row["prompt"] or "",
            modalities={m: resolve(row[m]) for m in modalities if row.get(m)},
        )
        for index, row in enumerate(rows)
    ]


def modality_columns(csv_path: str | os.PathLike) -> list[str]:
    with Path(csv_path).open(encoding="utf-8", newline="") as handle:
        return [c for c in (csv.DictReader(handle).fieldnames or []) if c not in ("video", "prompt")]


def load_row_frames(row: Row, num_frames: int, height: int, width: int):
    """(rgb frames, {modality: frames}) for one row, every stream at the RGB video's sampled indices."""
    rgb = load_frames(row.video)
    indices = sample_indices(len(rgb), num_frames)
    streams = {"rgb": rgb, **{name: load_frames(path) for name, path in row.modalities.items()}}
    frames = {}
    for name, video in streams.items():
        if len(video) <= indices[-1]:
            raise ValueError(f"{name} video has {len(video)} frames, the RGB video {len(rgb)}")
        frames[name] = [cover_crop(video[i], width, height) for i in indices]
    return frames


class LatentCache:
    """A folder of one safetensors file per usable row (latents of every stream, prompt embedding trimmed to its
    tokens) plus `prompts.safetensors` (the empty prompt and each modality's fixed prompt) and `index.json`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @property
    def index_path(self) -> Path:
        return self.folder / "index.json"

    def is_complete(self) -> bool:
        return self.index_path.is_file()

    def build(
        self,
        rows: list[Row],
        pipe,
        modalities: list[str],
        num_frames: int,
        height: int,
        width: int,
        max_sequence_length: int,
        progress: bool = True,
    ) -> dict:
        """Encode every row with `pipe` (its VAE and text encoder) in this process, then write the index; see
        `encode_rows` and `write_index`. Returns the index: usable rows and the skipped ones with reasons."""
        usable, skipped = self.encode_rows(rows, pipe, num_frames, height, width, max_sequence_length, progress)
        return self.write_index(usable, skipped, pipe, modalities, num_frames, height, width, max_sequence_length)

    def encode_rows(
        self,
        rows: list[Row],
        pipe,
        num_frames: int,
        height: int,
        width: int,
        max_sequence_length: int,
        progress: bool = True,
    ) -> tuple[list[int], dict[str, str]]:
        """Encode `rows` into one file each, written atomically; a row already in the folder is kept, so an
        interrupted build resumes, and rows with the same videos (several captions of one clip) share one VAE
        encoding. Returns (usable row indices, {skipped row index: reason})."""
        self.folder.mkdir(parents=True, exist_ok=True)
        device = pipe._execution_device
        usable, skipped, encoded = [], {}, {}
        for row in tqdm(rows, desc="encoding training data", disable=not progress):
            path = self.row_path(row.index)
            videos = _videos_of(row)
            if not path.is_file() and videos in encoded:
                tensors = load_file(encoded[videos])
                tensors["prompt_embeds"] = self._encode_trimmed(pipe, row.prompt, max_sequence_length, device)
                _save_atomic(tensors, path)
            elif not path.is_file():
                try:
                    frames = load_row_frames(row, num_frames, height, width)
                except (OSError, ValueError) as error:
                    skipped[str(row.index)] = f"{type(error).__name__}: {error}"
                    continue
                # every stream of a row in one VAE call: the causal VAE's per-chunk overhead dominates small videos
                names = list(frames)
                pixels = torch.cat(
                    [pipe.video_processor.preprocess_video(frames[n], height=height, width=width) for n in names]
                )
                latents = pipe.encode_video(pixels, device).cpu()
                tensors = {
                    "rgb" if n == "rgb" else f"modality.{n}": latent.clone() for n, latent in zip(names, latents)
                }
                if "segmentation" in frames:
                    tensors["foreground"] = foreground_mask(frames["segmentation"], tuple(latents.shape[-3:]))
                tensors["prompt_embeds"] = self._encode_trimmed(pipe, row.prompt, max_sequence_length, device)
                _save_atomic(tensors, path)
            encoded.setdefault(videos, path)
            usable.append(row.index)
        return usable, skipped

    def write_index(
        self,
        usable: list[int],
        skipped: dict[str, str],
        pipe,
        modalities: list[str],
        num_frames: int,
        height: int,
        width: int,
        max_sequence_length: int,
    ) -> dict:
        """The fixed prompts' embeddings, then `index.json`, whose presence marks the cache complete."""
        device = pipe._execution_device
        prompts = {"empty": self._encode_trimmed(pipe, "", max_sequence_length, device)}
        for name in modalities:
            prompts[f"modality.{name}"] = pipe.encode_modality_prompt(
                [name], max_sequence_length, device, torch.float32
            )[0].cpu()
        _save_atomic(prompts, self.folder / "prompts.safetensors")
        index = {
            "usable": sorted(usable),
            "skipped": dict(sorted(skipped.items(), key=lambda item: int(item[0]))),
            "modalities": modalities,
            "max_sequence_length": max_sequence_length,
            "video_shape": [num_frames, height, width],
            "foreground_masks": "segmentation" in modalities,
        }
        temporary = self.index_path.with_suffix(".partial")
        temporary.write_text(json.dumps(index, indent=2))
        os.replace(temporary, self.index_path)
        return index

    def row_path(self, index: int) -> Path:
        return self.folder / f"{index:07d}.safetensors"

    @staticmethod
    def _encode_trimmed(pipe, prompt: str, max_sequence_length: int, device) -> torch.Tensor:
        embeds = pipe._get_t5_prompt_embeds(prompt, 1, max_sequence_length, device, torch.float32)[0].cpu()
        tokens = len(pipe.tokenizer(prompt, max_length=max_sequence_length, truncation=True).input_ids)
        return embeds[:tokens].clone()

    def load(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return json.loads(self.index_path.read_text()), load_file(self.folder / "prompts.safetensors")

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        return load_file(self.row_path(index))


def encode_split(
    cache: LatentCache,
    rows: list[Row],
    pipe,
    modalities: list[str],
    num_frames: int,
    height: int,
    width: int,
    max_sequence_length: int,
    progress: bool = True,
) -> None:
    """Build `cache` with every process of the run (accelerate's): each encodes its share of the rows into the same
    folder, then the main process merges the shares into one index. Call on every process; one process alone builds
    it all, as `LatentCache.build` does."""
    state = PartialState()
    share = share_of_rows(rows, state.process_index, state.num_processes)
    done = cache.encode_rows(
        share, pipe, num_frames, height, width, max_sequence_length, progress and state.is_main_process
    )
    shares = gather_object([done])
    if state.is_main_process:
        usable = [index for indices, _ in shares for index in indices]
        skipped = {index: reason for _, reasons in shares for index, reason in reasons.items()}
        cache.write_index(usable, skipped, pipe, modalities, num_frames, height, width, max_sequence_length)
    state.wait_for_everyone()


def share_of_rows(rows: list[Row], process_index: int, num_processes: int) -> list[Row]:
    """This process's rows to encode: whole clips (rows with the same videos stay together, encoded by the VAE once)
    dealt round-robin, so every process gets about as many clips."""
    clips: dict[tuple, list[Row]] = {}
    for row in rows:
        clips.setdefault(_videos_of(row), []).append(row)
    return [row for clip in list(clips.values())[process_index::num_processes] for row in clip]


def _videos_of(row: Row) -> tuple:
    return (row.video, *sorted(row.modalities.items()))


def check_cache_fits(index: dict, index_path: Path, modalities: list[str], config: TrainConfig) -> None:
    """A latent cache reused from another run must hold these modalities at this video size and prompt length."""
    problems = []
    if missing := [m for m in modalities if m not in index["modalities"]]:
        problems.append(f"it has no latents for {missing} (it holds {index['modalities']})")
    wanted = [config.num_frames, config.height, config.width]
    if index.get("video_shape", wanted) != wanted:
        problems.append(f"it was encoded at frames x height x width {index['video_shape']}, this run wants {wanted}")
    if config.max_sequence_length not in (None, index["max_sequence_length"]):
        problems.append(
            f"its prompts were cut at {index['max_sequence_length']} tokens, this run's at {config.max_sequence_length}"
        )
    if config.weights_foreground() and not index.get("foreground_masks"):
        problems.append(
            "it has no foreground masks, which foreground_loss_weight needs (they are cached from a "
            "segmentation column, by this version or later)"
        )
    if problems:
        raise ConfigError(
            f"The latent cache {index_path.parent} does not fit this run: "
            + "; ".join(problems)
            + ". Give another `latent_cache` folder (or none, to encode into save_path)."
        )


def foreground_mask(segmentation: list, latent_grid: tuple[int, int, int]) -> torch.Tensor:
    """(T, H, W) mask of the latents that cover an object (any pixel off the palette's background, label 0) in
    `segmentation` frames, at the causal VAE's grid: latent frame 0 is frame 0, each later one the next group of
    (frames - 1) / (T - 1) frames."""

    objects = torch.from_numpy(decode_segmentation(np.stack([np.asarray(frame) for frame in segmentation])) > 0)
    frames, (latent_frames, latent_height, latent_width) = len(objects), latent_grid
    groups = [objects[:1]]
    if latent_frames > 1:
        step = (frames - 1) // (latent_frames - 1)
        groups += [objects[1 + i * step : 1 + (i + 1) * step] for i in range(latent_frames - 1)]
    per_latent_frame = torch.stack([group.any(0) for group in groups]).float()
    kernel = (objects.shape[1] // latent_height, objects.shape[2] // latent_width)
    return torch.nn.functional.max_pool2d(per_latent_frame[:, None], kernel)[:, 0].bool()


def pad_tokens(embeds: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad a trimmed prompt embedding back to `length` tokens (Wan's encoding: zeros past the text)."""
    return torch.cat([embeds, embeds.new_zeros(length - embeds.shape[0], embeds.shape[1])])


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, temporary)
    os.replace(temporary, path)
