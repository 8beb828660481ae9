"""The modality stream's input layer."""

from __future__ import annotations

import torch
import torch.nn as nn


class UnityVideoControlEncoder(nn.Module):
    r"""
    Turns a modality latent into tokens for the joint sequence.

    A patch embedding (the authors start it as a copy of the RGB one), then a linear projection that
    *replaces* the tokens (zero-initialised, so a freshly added modality stream contributes nothing
    until trained), then one identity vector per modality, added to every token of that stream.

    Args:
        in_channels (`int`): latent channels.
        dim (`int`): transformer width.
        patch_size (`tuple[int, int, int]`): (t, h, w) patch, kernel = stride.
        modalities (`list[str]`): names of the modalities with an identity embedding; this order defines the
            integer modality ids.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: tuple[int, int, int], modalities: list[str]):
        super().__init__()
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.proj_in = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj_in.weight)
        nn.init.zeros_(self.proj_in.bias)
        # ParameterDict sorts plain-dict keys, so the id order is kept separately
        self.modalities = list(modalities)
        self.modality_embeddings = nn.ParameterDict({name: nn.Parameter(torch.zeros(dim)) for name in modalities})

    def add_modality(self, name: str) -> None:
        self.modality_embeddings[name] = nn.Parameter(torch.zeros_like(self.proj_in.bias))
        self.modalities.append(name)

    def forward(self, latents: torch.Tensor, modality_ids: torch.LongTensor | None = None) -> torch.Tensor:
        """latents (B, C, F, H, W) -> tokens (B, f*h*w, dim); `modality_ids` (B,) selects identities."""
        tokens = self.patch_embedding(latents).flatten(2).transpose(1, 2)
        tokens = self.proj_in(tokens)
        if modality_ids is not None:
            identities = torch.stack([self.modality_embeddings[name] for name in self.modalities])
            tokens = tokens + identities[modality_ids].unsqueeze(1).to(tokens.dtype)
        return tokens
