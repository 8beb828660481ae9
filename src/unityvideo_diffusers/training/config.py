"""Training configuration: one dataclass, read from YAML, checked before anything is loaded."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..modalities import resolve_modality
from ..tasks import TASK_NAMES, resolve_task
from ..validation import check_model_source, check_size, load_yaml, numeric_problem, size_factors, unknown_key


class ConfigError(ValueError):
    """A training setting that cannot work, named with what is allowed."""


def _as_typed_numbers(name: str, value, kind) -> tuple[str | None, object]:
    """(None, `value` with its numbers as `kind` says) or (what is wrong, naming `name`, `value`)."""
    arguments = typing.get_args(kind)
    if type(None) in arguments:  # `X | None`
        if value is None:
            return None, value
        kind = arguments[0]
    if kind in (int, float):
        return numeric_problem(name, value, whole=kind is int)
    if typing.get_origin(kind) is dict and isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            problem, converted[key] = _as_typed_numbers(f"{name}[{key!r}]", item, typing.get_args(kind)[1])
            if problem:
                return problem, value
        return None, converted
    return None, value


@dataclass
class TrainConfig:
    # what to train and on what (the keys of the UnityVideo article's config files)
    model_path: str = ""  # a UnityVideo pipeline folder (transformer, vae, text_encoder, tokenizer) or Hub id
    dataset_path: str = ""  # the authors' metadata CSV: video, prompt, one column per modality
    save_path: str = "outputs/train"
    task: str = "multi"  # "multi" samples tasks by task_weights; or one of joint / control / perception
    batch_size: int = 1
    learning_rate: float = 1e-5  # the release's; the authors' script default is 5e-5
    max_epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides max_epochs when set
    max_minutes: float | None = None  # stop the loop after this long (then save and export as at the last step)

    # the authors' recipe (the defaults of their training script)
    task_weights: dict[str, float] = field(default_factory=lambda: {"joint": 0.5, "perception": 0.25, "control": 0.25})
    modalities: list[str] | None = None  # None: every modality column of the CSV that the model knows
    modality_weights: dict[str, float] | None = None  # None: uniform
    task_modality_weights: dict[str, dict[str, float]] = field(default_factory=dict)  # a task's own modality_weights
    timestep_distribution: str = "logit_normal"  # or "uniform"
    timestep_shift: float = 5.0
    prompt_dropout: float = 0.1
    foreground_loss_weight: float = (
        0.0  # extra RGB-loss weight where the segmentation video shows an object (0: off, the authors')
    )
    added_modules_lr_multiplier: float = 10.0  # control encoder, modality head, identity and option tables
    lr_warmup_steps: int = 200
    lr_min_ratio: float = 0.1  # cosine decay to this fraction of the peak; 1.0 = constant (the release)
    max_grad_norm: float = 1.5
    weight_decay: float = 0.01
    ema_decay: float = 0.9999  # 0 disables EMA
    ema_every: int = 8  # the release updated EMA every 8 optimizer steps (decay ** 8 each time)

    # how
    training_mode: str = "lora"  # "lora" or "full"
    lora_rank: int = 32
    lora_alpha: float = 32.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    train_added_modules: bool = True  # with LoRA: also train the modality-stream modules in full (small)
    new_modalities: dict[str, str] = field(default_factory=dict)  # name -> fixed prompt, added before training
    num_frames: int = 33
    height: int = 256
    width: int = 256
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = True
    compile_blocks: bool = False  # torch.compile each transformer block in place (diffusers' compile_repeated_blocks)
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    optimizer: str = "adamw"  # "adamw" or "adamw8bit" (bitsandbytes)
    seed: int = 42
    max_sequence_length: int | None = None  # text tokens; None: the model's tokenizer's (512 for Wan's UMT5)
    latent_cache: str = (
        ""  # folder of the encoded data; empty: save_path/latent_cache. Runs on the same data can share one
    )

    # bookkeeping
    checkpoint_every: int = 500
    keep_last_checkpoints: int = 3
    resume: bool = False  # continue from the newest checkpoint in save_path
    log_every: int = 10
    validation_every: int = 0  # every N steps, videos of validation_prompts (with the first trained modality); 0: none
    validation_prompts: list[str] = field(default_factory=list)
    validation_steps: int = 20  # sampling steps of the validation videos
    held_out_dataset_path: str = ""  # a CSV of held-out rows (cached in save_path/held_out_cache)
    held_out_loss_every: int = 0  # every N steps, the held-out loss of each trained task x modality; 0: none

    def __post_init__(self) -> None:
        self.validate()

    def _check_types(self) -> list[str]:
        """Each number-typed setting (and each number in a mapping, like task_weights) holds a number, an int where
        whole numbers are meant (`max_steps: 1e3` is 1000), so that the checks below compare numbers; returns the
        settings that do not, by name."""
        problems = []
        for name, kind in typing.get_type_hints(type(self)).items():
            problem, value = _as_typed_numbers(name, getattr(self, name), kind)
            if problem:
                problems.append(problem)
            else:
                setattr(self, name, value)
        return problems

    def validate(self) -> None:
        """Check every value against what is allowed; raise one ConfigError naming all problems."""
        problems = self._check_types()
        if problems:
            raise ConfigError("Invalid training config:\n  - " + "\n  - ".join(problems))

        def need(condition: bool, message: str) -> None:
            if not condition:
                problems.append(message)

        need(bool(self.model_path), "model_path is required (a UnityVideo pipeline folder or Hub id)")
        if self.model_path:
            try:
                check_model_source(self.model_path, "model_path")
            except (OSError, ValueError) as error:
                problems.append(str(error).rstrip("."))
        need(bool(self.dataset_path), "dataset_path is required (the metadata CSV)")
        if self.dataset_path:
            need(Path(self.dataset_path).is_file(), f"dataset_path {self.dataset_path} is not a file")
        if self.task != "multi":
            try:
                self.task = resolve_task(self.task).name
            except ValueError:
                problems.append(f"task must be 'multi' or one of {', '.join(TASK_NAMES)}, got {self.task!r}")
        try:
            self.task_weights = {resolve_task(name).name: float(weight) for name, weight in self.task_weights.items()}
            need(
                all(w >= 0 for w in self.task_weights.values()) and sum(self.task_weights.values()) > 0,
                "task_weights must be non-negative with a positive sum",
            )
        except (ValueError, TypeError, AttributeError) as error:
            problems.append(f"task_weights: {error}")
        if self.modalities is not None:
            try:
                self.modalities = [m if m in self.new_modalities else resolve_modality(m) for m in self.modalities]
            except ValueError as error:
                problems.append(f"modalities: {error}")
        if self.modality_weights is not None:
            need(
                all(float(w) >= 0 for w in self.modality_weights.values()) and sum(self.modality_weights.values()) > 0,
                "modality_weights must be non-negative with a positive sum",
            )
        try:
            for task, weights in self.task_modality_weights.items():
                if not isinstance(weights, dict):
                    raise TypeError(f"{task}: give a mapping of modality to weight, got {weights!r}")
            self.task_modality_weights = {
                resolve_task(task).name: weights for task, weights in self.task_modality_weights.items()
            }
            for task, weights in self.task_modality_weights.items():
                need(
                    all(float(w) >= 0 for w in weights.values()) and sum(weights.values()) > 0,
                    f"task_modality_weights[{task!r}] must be non-negative with a positive sum",
                )
        except (ValueError, TypeError, AttributeError) as error:
            problems.append(f"task_modality_weights: {error}")
        for name in self.new_modalities:
            need(name.isidentifier(), f"new_modalities: {name!r} is not an identifier-like name")
        need(
            self.timestep_distribution in ("logit_normal", "uniform"),
            "timestep_distribution must be 'logit_normal' or 'uniform'",
        )
        need(self.timestep_shift > 0, "timestep_shift must be positive")
        need(0 <= self.prompt_dropout < 1, "prompt_dropout must be in [0, 1)")
        need(
            isinstance(self.foreground_loss_weight, (int, float)) and 0 <= self.foreground_loss_weight < math.inf,
            f"foreground_loss_weight must be a finite number >= 0, got {self.foreground_loss_weight!r}",
        )
        need(
            self.training_mode in ("lora", "full"),
            f"training_mode must be 'lora' or 'full', got {self.training_mode!r}",
        )
        need(self.mixed_precision in ("no", "bf16", "fp16"), "mixed_precision must be 'no', 'bf16' or 'fp16'")
        need(self.optimizer in ("adamw", "adamw8bit"), "optimizer must be 'adamw' or 'adamw8bit'")
        for name in (
            "batch_size",
            "max_epochs",
            "lora_rank",
            "gradient_accumulation_steps",
            "ema_every",
            "checkpoint_every",
            "keep_last_checkpoints",
            "log_every",
        ):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        need(
            self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
            f"max_steps must be a positive integer or null, got {self.max_steps!r}",
        )
        need(
            self.max_minutes is None
            or (isinstance(self.max_minutes, (int, float)) and 0 < self.max_minutes < math.inf),
            f"max_minutes must be a positive number or null, got {self.max_minutes!r}",
        )
        for name in ("learning_rate", "max_grad_norm", "lora_alpha", "added_modules_lr_multiplier"):
            value = getattr(self, name)
            need(
                isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                f"{name} must be positive, got {value!r}",
            )
        need(0 < self.lr_min_ratio <= 1, "lr_min_ratio must be in (0, 1]")
        need(self.lr_warmup_steps >= 0, "lr_warmup_steps must be >= 0")
        need(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(
            self.num_frames >= 1 and (self.num_frames - 1) % 4 == 0, f"num_frames must be 4k+1, got {self.num_frames}"
        )
        for name in ("height", "width"):
            try:
                check_size(name, getattr(self, name), *size_factors(self.model_path))
            except ValueError as error:
                problems.append(str(error).rstrip("."))
        need(self.validation_every >= 0, "validation_every must be >= 0")
        need(not self.validation_every or bool(self.validation_prompts), "validation_every needs validation_prompts")
        need(self.validation_steps >= 1, "validation_steps must be >= 1")
        need(
            self.max_sequence_length is None
            or (isinstance(self.max_sequence_length, int) and self.max_sequence_length >= 1),
            f"max_sequence_length must be a positive integer or null, got {self.max_sequence_length!r}",
        )
        need(
            isinstance(self.held_out_loss_every, int) and self.held_out_loss_every >= 0,
            "held_out_loss_every must be >= 0",
        )
        need(
            not self.held_out_loss_every or bool(self.held_out_dataset_path),
            "held_out_loss_every needs held_out_dataset_path",
        )
        if self.held_out_dataset_path:
            need(
                Path(self.held_out_dataset_path).is_file(),
                f"held_out_dataset_path {self.held_out_dataset_path} is not a file",
            )
        if problems:
            raise ConfigError("Invalid training config:\n  - " + "\n  - ".join(problems))

    def weights_foreground(self) -> bool:
        """Whether `foreground_loss_weight` acts: it is set and some task of the run generates the RGB stream."""
        tasks = (
            [self.task] if self.task != "multi" else [name for name, weight in self.task_weights.items() if weight > 0]
        )
        return self.foreground_loss_weight > 0 and any(resolve_task(name).rgb_noisy for name in tasks)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [key for key in values if key not in known]
        if unknown:
            raise ConfigError("Invalid training config: " + " ".join(unknown_key(key, known) for key in unknown))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> TrainConfig:

        try:
            values = load_yaml(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"Cannot read the config {path}: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"The config {path} must be a mapping of keys to values.")
        return cls.from_dict({**values, **(overrides or {})})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
