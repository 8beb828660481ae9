"""UnityVideo for Hugging Face diffusers: one video DiT for text->video+modality, control and perception."""

from .modalities import RELEASED_MODALITIES, known_modalities, modality_prompt, register_modality, resolve_modality
from .models import UnityVideoControlEncoder, UnityVideoTransformer3DModel, UnityVideoTransformerOutput
from .pipelines import (
    UnityVideoControlPipeline,
    UnityVideoPerceptionPipeline,
    UnityVideoPipeline,
    UnityVideoPipelineOutput,
)
from .schedulers import LinearFlowMatchEulerScheduler
from .tasks import TASK_NAMES, resolve_task


__version__ = "0.1.0"

# the bundled demo model (a small UnityVideo trained on ShapesWorld; see unityvideo_diffusers.shapesworld.recipe)
DEMO_MODEL = __import__("pathlib").Path(__file__).parent / "assets" / "shapesworld-demo"

__all__ = [
    "DEMO_MODEL",
    "LinearFlowMatchEulerScheduler",
    "RELEASED_MODALITIES",
    "TASK_NAMES",
    "UnityVideoControlEncoder",
    "UnityVideoControlPipeline",
    "UnityVideoPerceptionPipeline",
    "UnityVideoPipeline",
    "UnityVideoPipelineOutput",
    "UnityVideoTransformer3DModel",
    "UnityVideoTransformerOutput",
    "known_modalities",
    "modality_prompt",
    "register_modality",
    "resolve_modality",
    "resolve_task",
]
