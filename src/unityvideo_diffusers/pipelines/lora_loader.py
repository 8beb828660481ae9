"""diffusers' LoRA calls for UnityVideo exports: adapters, plus what a LoRA run trains in full.

A LoRA run of the trainer also trains the modality-stream modules in full (control encoder, modality head, identity
and option tables) and may add modalities. Its export holds, beside diffusers' `pytorch_lora_weights.safetensors`,
`unityvideo_extra_weights.safetensors` (those modules' weights) and `unityvideo_training.json` (the new modalities'
names and fixed prompts). diffusers' loader reads only the first file; these overrides read the other two, so that
`pipe.load_lora_weights(export)` gives the trained model, and keep the weights they replace, so that
`pipe.unload_lora_weights()` gives the base model back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers.loaders import WanLoraLoaderMixin
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load_file

from ..modalities import known_modalities, modality_prompt, register_modality


EXTRA_WEIGHTS = "unityvideo_extra_weights.safetensors"
TRAINING_RECORD = "unityvideo_training.json"
_HUB_OPTIONS = ("subfolder", "revision", "token", "cache_dir", "local_files_only", "force_download")


def _export_file(source: str | os.PathLike, name: str, options: dict) -> Path | None:
    """`name` in a LoRA export (a folder, a file in it, or a Hub repo), or None when the export has none."""
    path = Path(source)
    if path.exists():
        folder = path if path.is_dir() else path.parent
        candidate = folder / (options.get("subfolder") or "") / name
        return candidate if candidate.is_file() else None

    try:
        return Path(
            hf_hub_download(str(source), name, **{k: options[k] for k in _HUB_OPTIONS if options.get(k) is not None})
        )
    except EntryNotFoundError:
        return None


def _base_name(name: str) -> str:
    """A parameter's name without peft's wrapping (`to_q.base_layer.weight` -> `to_q.weight`)."""
    return name.replace(".base_layer", "")


class UnityVideoLoraLoaderMixin(WanLoraLoaderMixin):
    """`load_lora_weights` / `unload_lora_weights` that also apply and undo a UnityVideo export's full weights."""

    @classmethod
    def _maybe_expand_t2v_lora_for_i2v(cls, transformer, state_dict):
        # Wan's loader widens text-to-video LoRAs for I2V image layers; UnityVideo has no image branch
        return state_dict

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, hotswap=False, **kwargs):
        """
        diffusers' `load_lora_weights`, and for a UnityVideo export (a folder or Hub repo written by the trainer)
        also its new modalities (added first) and its modality-stream weights (applied in full, whatever the
        adapter's scale). A state dict loads as in diffusers (adapters only).
        """
        source = pretrained_model_name_or_path_or_dict
        from_export = isinstance(source, (str, os.PathLike))
        if from_export:
            record = _export_file(source, TRAINING_RECORD, kwargs)
            self._add_modalities(json.loads(record.read_text()).get("new_modalities", {}) if record else {})
        super().load_lora_weights(source, adapter_name=adapter_name, hotswap=hotswap, **kwargs)
        extra = _export_file(source, EXTRA_WEIGHTS, kwargs) if from_export else None
        if extra is not None:
            self._replace_weights(load_file(extra))

    def unload_lora_weights(self):
        """diffusers' `unload_lora_weights`, then the modality-stream weights an export replaced, as they were."""
        super().unload_lora_weights()
        kept = getattr(self.transformer, "_weights_before_lora", {})
        if kept:
            parameters = dict(self.transformer.named_parameters())
            with torch.no_grad():
                for name, value in kept.items():
                    parameters[name].copy_(value)
            kept.clear()

    def _add_modalities(self, new_modalities: dict[str, str]) -> None:
        """Register an export's new modalities (name -> fixed prompt) and give each a place in the transformer."""
        for name, prompt in new_modalities.items():
            if name not in known_modalities():
                register_modality(name, prompt)
            elif modality_prompt(name) != prompt:
                raise ValueError(
                    f"The LoRA adds the modality {name!r} with the prompt {prompt!r}, but {name!r} is already known "
                    f"with the prompt {modality_prompt(name)!r}."
                )
            if name not in self.transformer.config.modalities:
                self.transformer.add_modality(name)

    def _replace_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy full weights into the transformer, first keeping the values they replace (once per parameter, so
        the base values survive several loads) on the transformer, which pipelines made with `from_pipe` share."""
        parameters = dict(self.transformer.named_parameters())
        unknown = [name for name in weights if name not in parameters]
        if unknown:
            raise ValueError(f"The LoRA's full weights have no place in this transformer: {unknown[:5]}")
        misshapen = [name for name, value in weights.items() if value.shape != parameters[name].shape]
        if misshapen:
            raise ValueError(
                f"The LoRA's full weights do not fit this transformer: {misshapen[0]} is "
                f"{tuple(weights[misshapen[0]].shape)}, the transformer's {tuple(parameters[misshapen[0]].shape)}."
            )
        if not hasattr(self.transformer, "_weights_before_lora"):
            self.transformer._weights_before_lora = {}
        kept = self.transformer._weights_before_lora
        with torch.no_grad():
            for name, value in weights.items():
                kept.setdefault(_base_name(name), parameters[name].detach().clone())
                parameters[name].copy_(value)
