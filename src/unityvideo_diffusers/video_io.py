"""Videos in and out: many input forms to frames, the reference's frame sampling and cropping, writing files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.utils import export_to_video, load_video


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VideoInput = str | os.PathLike | list | np.ndarray | torch.Tensor | PIL.Image.Image


def load_frames(video: VideoInput) -> list[PIL.Image.Image]:
    """
    One video as RGB PIL frames. Accepts a path (mp4, gif, ... via diffusers' `load_video`; a folder of images in
    name order), a list of PIL images or HxWx3 arrays, a (F, H, W, 3) array (uint8, or float in [0, 1]), or a
    (F, 3, H, W) tensor (float in [0, 1], or uint8). A still (an image file, a PIL image, an H x W x 3 array) is a
    video of one frame.
    """
    if isinstance(video, (str, os.PathLike)):
        return _read_path(Path(video))
    if isinstance(video, PIL.Image.Image):  # a still
        return [video.convert("RGB")]
    if isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] not in (1, 3):
            raise ValueError(f"A video tensor must be (F, 3, H, W), got {tuple(video.shape)}.")
        video = video.detach().cpu().permute(0, 2, 3, 1).float().numpy()
        video = video if video.max() > 1.0 else video * 255.0
    if isinstance(video, np.ndarray) and video.ndim == 3 and video.shape[-1] in (1, 3):  # a still, H x W x 3
        video = video[None]
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] not in (1, 3):
            raise ValueError(f"A video array must be (F, H, W, 3), got {video.shape}.")
        if video.dtype != np.uint8:
            scale = 255.0 if video.max() <= 1.0 else 1.0
            video = np.clip(np.round(video * scale), 0, 255).astype(np.uint8)
        return [
            PIL.Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame).convert("RGB") for frame in video
        ]
    if isinstance(video, (list, tuple)) and len(video) > 0:
        frames = []
        for frame in video:
            if isinstance(frame, PIL.Image.Image):
                frames.append(frame.convert("RGB"))
            elif isinstance(frame, np.ndarray) and frame.ndim in (2, 3):
                frames.extend(load_frames(frame[None] if frame.ndim == 3 else frame[None, ..., None]))
            else:
                raise TypeError(
                    f"A video given as a list holds PIL images or HxWx3 arrays, not {type(frame).__name__}."
                )
        return frames
    raise TypeError(
        "A video is a file path, a list of PIL images, a (F, H, W, 3) numpy array or a (F, 3, H, W) tensor; "
        f"got {type(video).__name__}."
    )


def as_video_list(videos) -> list:
    """A single video (any form `load_frames` takes) or a batch of them -> a list of videos."""
    if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
        return list(videos)
    if isinstance(videos, (list, tuple)) and videos and not _is_frame(videos[0]):
        return list(videos)
    return [videos]


def _is_frame(item) -> bool:
    return isinstance(item, PIL.Image.Image) or (isinstance(item, np.ndarray) and item.ndim in (2, 3))


def _library_message(error: Exception) -> str:
    """A video library's error in one line: its own first line and, when it quotes ffmpeg's output (a 20-line banner
    of version and build options, then what went wrong), the last line, which says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ({lines[-1]})"


def _read_path(path: Path) -> list[PIL.Image.Image]:
    if not path.exists():
        raise FileNotFoundError(f"No video at {path}.")
    if path.suffix.lower() in IMAGE_SUFFIXES:  # a still
        return [PIL.Image.open(path).convert("RGB")]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"The folder {path} holds no image frames.")
        return [PIL.Image.open(p).convert("RGB") for p in images]

    try:
        frames = load_video(str(path))
    except Exception as error:  # the readers raise many kinds; all mean the same to a user
        raise ValueError(f"Cannot read the video {path}: {_library_message(error)}") from None
    if not frames:
        raise ValueError(f"The video {path} has no readable frames.")
    return frames


def sample_indices(available: int, num_frames: int) -> list[int]:
    """`num_frames` indices spread evenly over `available` frames, first and last included (the reference's rule)."""
    if available < num_frames:
        raise ValueError(f"The video has {available} frames; {num_frames} were requested.")
    last = available - 1
    return [round(index * last / max(num_frames - 1, 1)) for index in range(num_frames)]


def cover_crop(frame: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Scale to cover (width, height) keeping the aspect ratio, then cut the centre (the reference's rule)."""
    scale = max(width / frame.width, height / frame.height)
    frame = frame.resize((round(frame.width * scale), round(frame.height * scale)), PIL.Image.Resampling.BICUBIC)
    left, top = (frame.width - width) // 2, (frame.height - height) // 2
    return frame.crop((left, top, left + width, top + height))


def prepare_video(video: VideoInput, num_frames: int, height: int, width: int) -> list[PIL.Image.Image]:
    """A conditioning video as the model needs it: `num_frames` frames sampled evenly, cover-cropped to size."""
    frames = load_frames(video)
    return [cover_crop(frames[index], width, height) for index in sample_indices(len(frames), num_frames)]


def save_video(frames, path: str | os.PathLike, fps: int = 8) -> Path:
    """Write frames (PIL list, (F, H, W, 3) array in [0, 1] or uint8) as mp4, gif, or a folder of PNGs."""
    path = Path(path)
    frames = load_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    elif path.suffix == "":
        path.mkdir(exist_ok=True)
        for index, frame in enumerate(frames):
            frame.save(path / f"{index:05d}.png")
    else:
        try:
            export_to_video(frames, str(path), fps=fps)
        except (OSError, RuntimeError, ValueError) as error:
            raise OSError(f"Cannot write the video {path}: {_library_message(error)}") from None
    return path
