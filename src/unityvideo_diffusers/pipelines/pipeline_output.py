from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class UnityVideoPipelineOutput(BaseOutput):
    r"""
    Output of the UnityVideo pipelines.

    Args:
        frames: the RGB videos (`None` for perception), as `output_type` asks: a (B, F, H, W, 3) array in [0, 1] for
            "np", a list of lists of PIL images for "pil", a (B, F, 3, H, W) tensor for "pt", latents for "latent".
        modality_frames: the modality videos, in the same form (visualisations, e.g. colour-mapped depth); `None` when
            no modality was generated.
    """

    frames: torch.Tensor | np.ndarray | list[list[PIL.Image.Image]] | None
    modality_frames: torch.Tensor | np.ndarray | list[list[PIL.Image.Image]] | None = None
