"""Writing what training produced, and loading it back into a pipeline.

LoRA runs export `pytorch_lora_weights.safetensors` (diffusers' format, with the adapter's config, so its alpha
survives) plus, when the modality-stream modules were trained too, `unityvideo_extra_weights.safetensors`; full runs
export a `transformer/` folder. `unityvideo_training.json` records the new modalities (name and fixed prompt).
`pipe.load_lora_weights(export)` reads all three (see `pipelines/lora_loader.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from ..pipelines import UnityVideoPipeline
from ..pipelines.lora_loader import EXTRA_WEIGHTS, TRAINING_RECORD
from .config import TrainConfig


def export_trained(model, folder: Path, config: TrainConfig) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "training_mode": config.training_mode,
        "new_modalities": config.new_modalities,
        "modalities": list(model.config.modalities),
    }
    if config.training_mode == "full":
        model.save_pretrained(folder / "transformer")
    else:
        UnityVideoPipeline.save_lora_weights(
            folder,
            transformer_lora_layers=get_peft_model_state_dict(model),
            transformer_lora_adapter_metadata=model.peft_config["default"].to_dict(),
        )
        extra = {
            name: p.detach().cpu().contiguous()
            for name, p in model.named_parameters()
            if p.requires_grad and "lora_" not in name
        }
        if extra:
            save_file(extra, folder / EXTRA_WEIGHTS)
    (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
    return folder


def load_trained_lora(pipe, folder: str | Path, adapter_name: str | None = None) -> None:
    """Load a LoRA run's export into `pipe`: the same as `pipe.load_lora_weights(folder, adapter_name=...)`, which
    adds the new modalities, loads the adapters and applies the modality-stream weights."""
    pipe.load_lora_weights(folder, adapter_name=adapter_name)
