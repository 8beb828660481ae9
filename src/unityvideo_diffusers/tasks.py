"""The three jobs of one model, and the one table of their names.

A job is a choice of which streams start as noise. Each has one canonical name (used in Python, in training configs,
in evaluation metrics and in file names), one command-line verb, and the aliases users bring from elsewhere: the
authors' task names ("flow" there means "the modality stream", whatever the modality) and the usual short ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    verb: str  # the `unityvideo` command that runs it
    rgb_noisy: bool
    modality_noisy: bool
    aliases: tuple[str, ...]
    summary: str


# fmt: off
TASKS: tuple[Task, ...] = (
    Task("joint",      "generate", rgb_noisy=True,  modality_noisy=True,  aliases=("text2all", "text2video", "t2v"),
         summary="text -> video (+ a modality video)"),
    Task("control",    "control",  rgb_noisy=True,  modality_noisy=False, aliases=("flow2video", "modality2video"),
         summary="modality video (+ text) -> video"),
    Task("perception", "estimate", rgb_noisy=False, modality_noisy=True,  aliases=("video2flow", "estimation",
         "video2modality"), summary="video -> modality video"),
)
# fmt: on
TASK_NAMES: tuple[str, ...] = tuple(task.name for task in TASKS)
_BY_NAME = {key: task for task in TASKS for key in (task.name, task.verb, *task.aliases)}


def resolve_task(name: str) -> Task:
    """A job by its canonical name, its command-line verb or an alias (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"A task is named by a string, got {type(name).__name__}.")
    task = _BY_NAME.get(name.strip().lower())
    if task is None:
        known = "; ".join(f"{task.name} (also {', '.join((task.verb, *task.aliases))})" for task in TASKS)
        raise ValueError(f"Unknown task {name!r}. Known: {known}.")
    return task
