"""The authors' sampler as a diffusers scheduler."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


class LinearFlowMatchEulerScheduler(FlowMatchEulerDiscreteScheduler):
    r"""
    Euler steps on a linear sigma grid from 1 to 0 (`num_inference_steps + 1` points), no shift: exactly the procedure
    of the authors' inference script, `x <- x + (sigma_next - sigma) * v` with the model given `sigma * 1000`.

    Use it to reproduce the reference step for step; for quality, a shifted schedule (e.g. UniPC with `flow_shift=5`,
    the shift the model was trained with) is the better default.
    """

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ):
        if sigmas is None and timesteps is None:
            if not num_inference_steps or num_inference_steps < 1:
                raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
            # torch's float32 linspace, bit for bit the grid of the reference loop
            sigmas = torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float32)[:-1].numpy()
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)
