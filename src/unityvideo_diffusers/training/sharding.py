"""What changes when accelerate shards the model (FSDP2, DeepSpeed ZeRO) instead of copying it (DDP).

Under sharding each rank holds a slice of every weight, gradient and optimizer moment, so nothing may read "the model"
on one rank: checkpoints are written by every rank into a sharded folder, the EMA's slices go beside them, and the
exports gather the full weights to the main process first. The checks here run before anything heavy is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator, init_empty_weights
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule

from ..models import UnityVideoTransformer3DModel
from .config import ConfigError, TrainConfig


SHARDED_TYPES = (DistributedType.FSDP, DistributedType.DEEPSPEED)
RUN_LAYOUT = "run_layout.json"  # in each checkpoint: how many processes wrote it, and how
EMA_FOLDER = "ema_sharded"


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type in SHARDED_TYPES


def check_deepspeed_installed() -> None:
    """accelerate's DeepSpeed config needs the `deepspeed` package; say so before the process group starts."""
    wants = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if wants and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "This run's accelerate config asks for DeepSpeed (ZeRO), and the `deepspeed` package is not installed: "
            "`pip install deepspeed` on a machine with CUDA, or launch with configs/accelerate/fsdp2.yaml "
            "(FSDP2 shards the same way and needs only torch)."
        )


def check_sharding_plan(accelerator: Accelerator, config: TrainConfig) -> None:
    """FSDP wraps the classes its config names; one the model does not have would fail only after loading it. Under
    DeepSpeed the trainer keeps no EMA (its slices are kept beside FSDP2's only)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED and config.ema_decay > 0:
        raise ConfigError(
            "Under DeepSpeed this trainer keeps no EMA: set ema_decay to 0, or launch with "
            "configs/accelerate/fsdp2.yaml, which shards the EMA with the weights."
        )
    if accelerator.distributed_type != DistributedType.FSDP:
        return
    names = accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap or []
    blocks = UnityVideoTransformer3DModel._no_split_modules
    unknown = [name for name in names if name not in blocks]
    if unknown:
        raise ConfigError(
            f"The FSDP config wraps {unknown}, which UnityVideoTransformer3DModel does not have: set "
            f"fsdp_transformer_layer_cls_to_wrap to {', '.join(blocks)} (one shard group per transformer block)."
        )


def configure_deepspeed(accelerator: Accelerator, config: TrainConfig) -> None:
    """DeepSpeed batches, accumulates and clips gradients itself: give it the training config's values (the trainer
    feeds it batches itself, so it has no data loader to read the batch size from)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    accelerator.state.deepspeed_plugin.deepspeed_config.update(
        train_micro_batch_size_per_gpu=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_clipping=config.max_grad_norm,
    )


def run_layout(accelerator: Accelerator) -> dict:
    return {
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "num_processes": accelerator.num_processes,
    }


def check_resumable(accelerator: Accelerator, checkpoint: Path) -> None:
    """A sharded checkpoint holds one slice per process of the run that wrote it; resume it with the same layout."""
    path = checkpoint / RUN_LAYOUT
    if not path.is_file():  # written before layouts were recorded: an unsharded run
        written = {"distributed_type": "unsharded", "num_processes": None}
    else:
        written = json.loads(path.read_text())
    now = run_layout(accelerator)
    was_sharded = written["distributed_type"] in {str(t).split(".")[-1] for t in SHARDED_TYPES}
    if not (was_sharded or is_sharded(accelerator)):
        return  # data-parallel checkpoints hold the whole model: any number of processes can resume them
    if written != now:
        raise ConfigError(
            f"{checkpoint} was written by {written['num_processes']} process(es) under {written['distributed_type']}, "
            f"and this run has {now['num_processes']} under {now['distributed_type']}. Resume with the same "
            "accelerate config and number of processes (the order the data is drawn in depends on it too); to go on "
            "at another size, start a new run from the weights: `accelerate merge-weights "
            f"{checkpoint}/pytorch_model_fsdp_0 <folder>` writes them whole."
        )


def owned_elements(model: torch.nn.Module, optimizer) -> dict:
    """How many parameter and optimizer-state elements this rank holds in its own memory (a sharded tensor counts
    its local slice only): measured, not assumed."""

    def local(tensor: torch.Tensor) -> int:
        if hasattr(tensor, "ds_tensor"):  # DeepSpeed ZeRO-3: its slice, plus the whole where it keeps one gathered
            return tensor.ds_tensor.numel() + tensor.data.numel()
        return (tensor.to_local() if hasattr(tensor, "to_local") else tensor).numel()

    state = [value for per_parameter in optimizer.state.values() for value in per_parameter.values()]
    return {
        "parameters": sum(local(p) for p in model.parameters()),
        "trainable_parameters": sum(local(p) for p in model.parameters() if p.requires_grad),
        "optimizer_state": sum(local(v) for v in state if torch.is_tensor(v) and v.ndim > 0),
    }


def reshard(model: torch.nn.Module) -> None:
    """Free the full weights a forward without backward leaves gathered (FSDP2 keeps the root's after a forward)."""

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def save_sharded_ema(ema, names: list[str], folder: Path) -> None:
    """Every rank writes its slices of the EMA weights (torch.distributed.checkpoint), beside accelerate's."""

    state = {"shadow": dict(zip(names, ema.shadow_params)), "optimization_step": ema.optimization_step}
    dcp.save(state, checkpoint_id=str(folder / EMA_FOLDER))


def load_sharded_ema(ema, names: list[str], folder: Path) -> None:

    state = {"shadow": dict(zip(names, ema.shadow_params)), "optimization_step": 0}
    dcp.load(state, checkpoint_id=str(folder / EMA_FOLDER))  # into the shadow tensors, in place
    ema.optimization_step = int(state["optimization_step"])


def gather_full(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The full CPU values of (possibly sharded) tensors; every rank must call it (it all-gathers)."""
    return [(t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu() for t in tensors]


def unsharded_copy(sharded: torch.nn.Module, state: dict[str, torch.Tensor], prepare) -> torch.nn.Module:
    """A plain model built on the meta device (no memory) with the sharded one's config, made trainable the same way
    by `prepare` (LoRA adapters, requires_grad), then given the gathered `state` itself (no copy)."""

    with init_empty_weights():
        model = UnityVideoTransformer3DModel.from_config(sharded.config)
        prepare(model)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"The gathered weights do not fit the model: missing {missing[:5]}, extra {unexpected[:5]}")
    return model
