from .pipeline_output import UnityVideoPipelineOutput
from .pipeline_unityvideo import UnityVideoPipeline
from .pipeline_unityvideo_control import UnityVideoControlPipeline
from .pipeline_unityvideo_perception import UnityVideoPerceptionPipeline


__all__ = [
    "UnityVideoControlPipeline",
    "UnityVideoPerceptionPipeline",
    "UnityVideoPipeline",
    "UnityVideoPipelineOutput",
]
