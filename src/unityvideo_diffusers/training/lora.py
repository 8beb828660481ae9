"""Writing what training produced, and loading it back into a pipeline.

LoRA runs export `pytorch_lora_weights.safetensors` (diffusers' format, what `pipe.load_lora_weights` reads) plus,
when the modality-stream modules were trained too, `unityvideo_extra_weights.safetensors`; full runs export a
`transformer/` folder. `unityvideo_training.json` records the new modalities (name and fixed prompt).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..modalities import known_modalities, register_modality
from .config import TrainConfig


EXTRA_WEIGHTS = "unityvideo_extra_weights.safetensors"
TRAINING_RECORD = "unityvideo_training.json"


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
        from peft.utils import get_peft_model_state_dict

        from ..pipelines import UnityVideoPipeline

        UnityVideoPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model))
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
    """Load a LoRA run's export into `pipe`: new modalities first, then the LoRA and the extra weights."""
    folder = Path(folder)
    record = json.loads((folder / TRAINING_RECORD).read_text()) if (folder / TRAINING_RECORD).is_file() else {}
    for name, prompt in record.get("new_modalities", {}).items():
        if name not in known_modalities():
            register_modality(name, prompt)
        if name not in pipe.transformer.config.modalities:
            pipe.transformer.add_modality(name)
    pipe.load_lora_weights(folder, adapter_name=adapter_name)
    if (folder / EXTRA_WEIGHTS).is_file():
        extra = load_file(folder / EXTRA_WEIGHTS)
        unexpected = pipe.transformer.load_state_dict(extra, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"Extra weights with no place in this transformer: {unexpected[:5]}")
