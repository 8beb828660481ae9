"""The three jobs of one model. A task is a choice of which streams start as noise."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    rgb_noisy: bool
    modality_noisy: bool


TASKS: tuple[Task, ...] = (
    Task("joint", rgb_noisy=True, modality_noisy=True),  # text -> video + modality
    Task("control", rgb_noisy=True, modality_noisy=False),  # modality (+ text) -> video
    Task("perception", rgb_noisy=False, modality_noisy=True),  # video -> modality
)
TASK_NAMES: tuple[str, ...] = tuple(task.name for task in TASKS)

# The authors' names ("flow" there means "the modality stream").
_ALIASES = {"text2all": "joint", "flow2video": "control", "video2flow": "perception", "estimation": "perception"}


def resolve_task(name: str) -> Task:
    if not isinstance(name, str):
        raise TypeError(f"A task is named by a string, got {type(name).__name__}.")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    for task in TASKS:
        if task.name == key:
            return task
    raise ValueError(f"Unknown task {name!r}. Known: {', '.join(TASK_NAMES)} (or the authors' {', '.join(_ALIASES)}).")
