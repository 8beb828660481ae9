"""Key names of the released checkpoint (the authors' `UnifiedWanModel`, original Wan layout under `base.`)
and of `UnityVideoTransformer3DModel` (diffusers' Wan layout). Every pair below is a whole-key template, so the
map is a bijection and checkable: a key that matches no template is reported, never guessed.
Shapes are identical on both sides.
"""

from __future__ import annotations

import re


_PLACEHOLDERS = {"block": r"\d+", "param": r"weight|bias", "modality": r"[A-Za-z_]\w*"}

_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}

KEY_TEMPLATES: list[tuple[str, str]] = [
    ("base.patch_embedding.{param}", "patch_embedding.{param}"),
    ("base.time_embedding.0.{param}", "condition_embedder.time_embedder.linear_1.{param}"),
    ("base.time_embedding.2.{param}", "condition_embedder.time_embedder.linear_2.{param}"),
    ("base.time_projection.1.{param}", "condition_embedder.time_proj.{param}"),
    ("base.text_embedding.0.{param}", "condition_embedder.text_embedder.linear_1.{param}"),
    ("base.text_embedding.2.{param}", "condition_embedder.text_embedder.linear_2.{param}"),
    *[
        (f"base.blocks.{{block}}.{original}_attn.{layer}.{{param}}", f"blocks.{{block}}.{ours}.{renamed}.{{param}}")
        for original, ours in (("self", "attn1"), ("cross", "attn2"))
        for layer, renamed in _ATTENTION.items()
    ],
    # the original's norm3 is the cross-attention norm, diffusers' norm2
    ("base.blocks.{block}.norm3.{param}", "blocks.{block}.norm2.{param}"),
    ("base.blocks.{block}.ffn.0.{param}", "blocks.{block}.ffn.net.0.proj.{param}"),
    ("base.blocks.{block}.ffn.2.{param}", "blocks.{block}.ffn.net.2.{param}"),
    ("base.blocks.{block}.modulation", "blocks.{block}.scale_shift_table"),
    ("base.head.head.{param}", "proj_out.{param}"),
    ("base.head.modulation", "scale_shift_table"),
    ("flow_patch_embedding.{param}", "control_encoder.patch_embedding.{param}"),
    ("flow_in.{param}", "control_encoder.proj_in.{param}"),
    ("modality_embeddings.{modality}", "control_encoder.modality_embeddings.{modality}"),
    ("flow_head.head.{param}", "modality_proj_out.{param}"),
    ("flow_head.modulation", "modality_scale_shift_table"),
]


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, regex in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
    return re.compile(pattern + r"\Z")


_TO_DIFFUSERS = [(_compile(released), diffusers) for released, diffusers in KEY_TEMPLATES]
_TO_RELEASED = [(_compile(diffusers), released) for released, diffusers in KEY_TEMPLATES]


def _translate(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            return target.format(**match.groupdict())
    return None


def released_to_diffusers_key(key: str) -> str | None:
    """The diffusers name of a released-checkpoint key, or None if the key is not part of the released layout."""
    return _translate(key, _TO_DIFFUSERS)


def diffusers_to_released_key(key: str) -> str | None:
    """The released-checkpoint name of a diffusers key, or None if the released layout has no place for it."""
    return _translate(key, _TO_RELEASED)


def modalities_in_released_keys(keys) -> list[str]:
    """Names of the modality identity embeddings present in a released-layout key set, in file order."""
    prefix = "modality_embeddings."
    return [key[len(prefix) :] for key in keys if key.startswith(prefix)]
