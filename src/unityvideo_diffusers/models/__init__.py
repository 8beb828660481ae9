from .control_encoder import UnityVideoControlEncoder
from .transformer_unityvideo import (
    UnityVideoTransformer3DModel,
    UnityVideoTransformerBlock,
    UnityVideoTransformerOutput,
)


__all__ = [
    "UnityVideoControlEncoder",
    "UnityVideoTransformer3DModel",
    "UnityVideoTransformerBlock",
    "UnityVideoTransformerOutput",
]
