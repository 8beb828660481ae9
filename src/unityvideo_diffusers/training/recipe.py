"""The training recipe's math, stated once.

Flow matching, as the released model was trained: x_t = (1 - t) x_0 + t * noise, target velocity u = noise - x_0, the model
sees t * 1000. A task noises some streams and leaves the others clean (a clean stream is x_0 itself); both streams
are driven by the noisy stream's t ("shareT"), and only noisy streams are supervised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..tasks import Task


def sample_timesteps(batch_size: int, distribution: str, shift: float, generator: torch.Generator) -> torch.Tensor:
    """t in (0, 1): logit-normal (sigmoid of a standard normal) or uniform, then shifted towards noise:
    t' = s t / (1 + (s - 1) t)."""
    if distribution == "logit_normal":
        t = torch.sigmoid(torch.randn(batch_size, generator=generator))
    else:
        t = torch.rand(batch_size, generator=generator)
    return shift * t / (1 + (shift - 1) * t)


@dataclass
class NoisedStreams:
    rgb: torch.Tensor
    modality: torch.Tensor
    rgb_target: torch.Tensor | None  # None where the stream is clean (not supervised)
    modality_target: torch.Tensor | None


def noise_streams(
    task: Task, rgb: torch.Tensor, modality: torch.Tensor, t: torch.Tensor, generator: torch.Generator
) -> NoisedStreams:
    """Noise the streams `task` generates at time t (B,); keep the others clean."""
    shape = (-1,) + (1,) * (rgb.ndim - 1)
    t = t.view(shape).to(rgb.dtype)

    def noised(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(x.shape, generator=generator).to(x.dtype)
        return (1 - t) * x + t * noise, noise - x

    rgb, rgb_target = noised(rgb) if task.rgb_noisy else (rgb, None)
    modality, modality_target = noised(modality) if task.modality_noisy else (modality, None)
    return NoisedStreams(rgb, modality, rgb_target, modality_target)


def stream_losses(
    prediction: tuple[torch.Tensor, torch.Tensor], streams: NoisedStreams, rgb_weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Mean squared error of each supervised stream's velocity (`rgb_loss`, `modality_loss`); `loss` is their sum.
    `rgb_weight`, broadcastable to the latents (e.g. (B, 1, T, H, W)), makes the RGB stream's a weighted mean:
    sum(w e^2) / sum(w), so a uniform weight changes nothing. The modality stream stays uniform: what the prompt
    describes is the video's objects, while an estimate is judged on every pixel, background included."""
    losses = {}
    pairs = (
        ("rgb_loss", prediction[0], streams.rgb_target, rgb_weight),
        ("modality_loss", prediction[1], streams.modality_target, None),
    )
    for name, predicted, target, weight in pairs:
        if target is not None:
            error = (predicted.float() - target.float()) ** 2
            if weight is None:
                losses[name] = torch.mean(error)
            else:
                weights = weight.to(error).expand_as(error)
                losses[name] = (weights * error).sum() / weights.sum()
    losses["loss"] = sum(losses.values())
    return losses


def foreground_weight(foreground: torch.Tensor, extra: float) -> torch.Tensor:
    """(B, T, H, W) object mask at the latent grid -> (B, 1, T, H, W) loss weight 1 + `extra` on the objects."""
    return (1 + extra * foreground.float())[:, None]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to the peak, then cosine decay to `min_ratio` of it (constant when min_ratio is 1)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
