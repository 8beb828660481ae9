"""Which modules to keep out of weight quantization: the output error each module group causes alone.

    python benchmarks/quantization_sensitivity.py

A small model with the 5B model's proportions of layer types (random weights at diffusers' own initialisation,
plus small random values in the zero-initialised modality modules) is loaded in bf16, then loaded again with
exactly one group of linear layers quantized (torchao int8 and float8 weight-only, on CPU). The relative error of
each stream's output against the bf16 model, divided by the group's share of the 5B model's parameters, says how
much precision a group costs per byte it saves. Random weights have no trained outliers: read the ratios, not the
absolute errors.
"""

from __future__ import annotations

import logging
import tempfile

import torch
from diffusers import TorchAoConfig
from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

from unityvideo_diffusers import UnityVideoTransformer3DModel


CONFIG = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=4, text_dim=256, freq_dim=256)
# name (a prefix of module names) -> what it is
GROUPS = {
    "blocks": "attention and FFN of the 30 blocks",
    "condition_embedder.time_proj": "the modulation projection (6 x dim per block, from the time embedding)",
    "condition_embedder.text_embedder": "text embedding MLP",
    "control_encoder": "modality-stream input (projection after its patch embedding)",
    "proj_out": "RGB output head",
    "modality_proj_out": "modality output head",
}
SCHEMES = {"int8 weight-only": Int8WeightOnlyConfig, "float8 weight-only": Float8WeightOnlyConfig}


def linear_names(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def share_at_5b(group: str) -> float:
    """The group's fraction of the released 5B model's parameters."""
    with torch.device("meta"):
        model = UnityVideoTransformer3DModel()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(group + ".")) / total


def inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 48, 3, 8, 8)
    return dict(
        hidden_states=torch.randn(shape, generator=generator).bfloat16(),
        modality_hidden_states=torch.randn(shape, generator=generator).bfloat16(),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 16, CONFIG["text_dim"], generator=generator).bfloat16(),
        modality="depth",
    )


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def main() -> None:
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = UnityVideoTransformer3DModel(**CONFIG).eval()
    with torch.no_grad():  # the zero-initialised modality modules get small values, as after training
        for parameter in model.parameters():
            if parameter.abs().max() == 0:
                parameter.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reference = UnityVideoTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
        names = linear_names(reference)
        with torch.no_grad():
            expected = reference(**inputs())
        print(f"{'quantized alone':<34}{'5B share':>9}  " + "".join(f"{s + ' rgb / mod':>30}" for s in SCHEMES))
        for group in GROUPS:
            # weight names, matched exactly: a module name would also match its suffixes ("proj_out" in
            # "modality_proj_out"), as diffusers' torchao quantizer matches by substring
            others = [f"{n}.weight" for n in names if not (n == group or n.startswith(group + "."))]
            row = f"{group:<34}{share_at_5b(group):>9.2%}  "
            for scheme in SCHEMES.values():
                config = TorchAoConfig(scheme(), modules_to_not_convert=others)
                quantized = UnityVideoTransformer3DModel.from_pretrained(
                    folder, torch_dtype=torch.bfloat16, quantization_config=config
                )
                with torch.no_grad():
                    out = quantized(**inputs())
                rgb, mod = (
                    relative_error(out.sample, expected.sample),
                    relative_error(out.modality_sample, expected.modality_sample),
                )
                row += f"{rgb:>14.2e} /{mod:>9.2e}     "
            print(row)
    print("(relative L2 error of each stream's output against the bf16 model, one group quantized at a time)")


if __name__ == "__main__":
    main()
