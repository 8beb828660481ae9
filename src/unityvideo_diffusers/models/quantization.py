"""Which modules weight quantization leaves alone by default, and how a diffusers quantization config is told.

Measured with `benchmarks/quantization_sensitivity.py` (one group of linear layers quantized at a time, torchao
int8 and float8 weight-only, output error of each stream against bf16): each of the small modules below causes
about as much output error alone as all 30 blocks together, while holding 1.8% of the 5B model's parameters
(float8: a head alone 2.6e-2 relative error on its stream, all blocks 0.8e-2 / 1.7e-2). Keeping them costs 1.8%
of the bytes quantization saves. They are:

- `condition_embedder`: the time embedding, the text embedding MLP, and the projection that makes every block's
  modulation (shift, scale, gate) from the time embedding;
- `control_encoder`: the modality stream's input layer;
- `proj_out`, `modality_proj_out`: the two output heads.

The norms and the modulation tables (`scale_shift_table`) are not linear layers, so no quantizer touches them;
they stay in fp32 (`_keep_in_fp32_modules`).
"""

from __future__ import annotations

import copy


UNQUANTIZED_MODULES = ["condition_embedder", "control_encoder", "proj_out", "modality_proj_out"]
# the field in which each diffusers quantization config lists the modules it leaves alone
_SKIP_FIELDS = ("modules_to_not_convert", "llm_int8_skip_modules")


def keep_unquantized(quantization_config, modules: list[str] = UNQUANTIZED_MODULES):
    """
    A copy of a diffusers quantization config that leaves `modules` unquantized, unless the config already names
    its own modules to skip (the user's choice wins). A dict (a config read from a saved model) is left as it is.
    """
    if quantization_config is None or isinstance(quantization_config, dict):
        return quantization_config
    for field in _SKIP_FIELDS:
        if hasattr(quantization_config, field):
            if getattr(quantization_config, field) is not None:
                return quantization_config
            configured = copy.copy(quantization_config)
            setattr(configured, field, list(modules))
            return configured
    return quantization_config
