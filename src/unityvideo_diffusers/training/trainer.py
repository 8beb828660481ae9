"""One trainer for LoRA and full fine-tuning, on accelerate (one CPU or GPU to many; DDP, FSDP or DeepSpeed through
accelerate's config), with the authors' multi-task recipe: each step draws a task and a modality, noises the streams
that task generates, and regresses their velocities.

Everything random in a step (task, modality, batch, prompt dropout, timesteps, noise) is drawn from generators
seeded by (seed, step[, position of the sample in the step's batch]), so a resumed run draws exactly what an
uninterrupted one would, and a batch split over N processes draws what one process would for all of it; a checkpoint
holds the trainable weights, the optimizer, the EMA and the step, and is written to a temporary folder renamed into
place. Under sharding (FSDP2, DeepSpeed ZeRO) see sharding.py for what changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object, set_seed
from diffusers.training_utils import EMAModel
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..modalities import known_modalities, modality_prompt, register_modality
from ..models import UnityVideoTransformer3DModel
from ..pipelines import UnityVideoPipeline
from ..tasks import resolve_task
from ..video_io import save_video
from .config import ConfigError, TrainConfig
from .data import LatentCache, check_cache_fits, encode_split, modality_columns, pad_tokens, read_metadata
from .lora import export_trained
from .recipe import NoisedStreams, foreground_weight, lr_factor, noise_streams, sample_timesteps, stream_losses
from .sharding import (
    RUN_LAYOUT,
    check_deepspeed_installed,
    check_resumable,
    check_sharding_plan,
    configure_deepspeed,
    gather_full,
    is_sharded,
    load_sharded_ema,
    owned_elements,
    reshard,
    run_layout,
    save_sharded_ema,
    unsharded_copy,
)


logger = logging.getLogger(__name__)

# parameters that exist for the modality stream only: trained at a higher learning rate, and in full with LoRA
ADDED_MODULES = ("control_encoder.", "modality_proj_out.", "modality_scale_shift_table", "task_embedder.")
TRAINABLE_WEIGHTS = "trainable_weights.safetensors"


SAMPLE_STREAMS = 1000  # stream 1000 + i: the i-th sample of a step's batch (over every process and micro-batch)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): the same draws whether or not the run was resumed."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_000_033 + stream) % (1 << 63))


class MultiTaskSampler:
    """What each step trains on: a task and a modality (identical on every rank), and a batch of rows having that
    modality: this rank's share of an epoch-wise permutation of them, consumed in order."""

    def __init__(self, config: TrainConfig, rows_with: dict[str, list[int]], rank: int, world: int):
        self.config, self.rows_with, self.rank, self.world = config, rows_with, rank, world
        self.modalities = list(rows_with)
        if config.task == "multi":
            self.tasks = [resolve_task(name) for name in config.task_weights]
            self.task_weights = torch.tensor(list(config.task_weights.values()))
        else:
            self.tasks, self.task_weights = [resolve_task(config.task)], torch.ones(1)
        self.modality_weights = {}  # per task: its own task_modality_weights, else modality_weights
        for task in self.tasks:
            name = "task_modality_weights" if task.name in config.task_modality_weights else "modality_weights"
            weights = config.task_modality_weights.get(task.name, config.modality_weights) or {}
            self.modality_weights[task.name] = torch.tensor(
                [float(weights.get(m, 0.0 if weights else 1.0)) for m in self.modalities]
            )
            if self.modality_weights[task.name].sum() <= 0:
                raise ConfigError(f"{name} give {task.name} no weight on the modalities with data: {self.modalities}.")
        self.drawn = {m: 0 for m in self.modalities}  # batches of each modality drawn so far
        self.next_step = 0

    def _choice(self, step: int):
        generator = step_generator(self.config.seed, step, 0)
        task = self.tasks[int(torch.multinomial(self.task_weights, 1, generator=generator))]
        modality = self.modalities[int(torch.multinomial(self.modality_weights[task.name], 1, generator=generator))]
        return task, modality

    def draw(self, step: int):
        """(task, modality, row indices per micro-batch) of `step`; steps are drawn in order (a resumed run replays
        the choices)."""
        while self.next_step < step:
            self.drawn[self._choice(self.next_step)[1]] += self.config.gradient_accumulation_steps
            self.next_step += 1
        task, modality = self._choice(step)
        rows = self.rows_with[modality]
        batches = []
        for _ in range(self.config.gradient_accumulation_steps):
            start = (self.drawn[modality] * self.world + self.rank) * self.config.batch_size
            batch = []
            for position in range(start, start + self.config.batch_size):
                epoch, offset = divmod(position, len(rows))
                order = torch.randperm(
                    len(rows), generator=step_generator(self.config.seed, epoch, 1 + self.modalities.index(modality))
                )
                batch.append(rows[int(order[offset])])
            batches.append(batch)
            self.drawn[modality] += 1
        self.next_step = step + 1
        return task, modality, batches


class TrainingProgress:
    """The part of a checkpoint accelerate does not know: the step."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def load_transformer(model_path: str) -> UnityVideoTransformer3DModel:
    path = Path(model_path)
    subfolder = "transformer" if (path / "transformer").is_dir() or not path.exists() else None
    return UnityVideoTransformer3DModel.from_pretrained(model_path, subfolder=subfolder, dtype=torch.float32)


def prepare_trainable(transformer: UnityVideoTransformer3DModel, config: TrainConfig) -> list[dict]:
    """Mark what trains (LoRA adapters or everything; the added modules too) and return optimizer groups."""
    transformer.requires_grad_(config.training_mode == "full")
    if config.training_mode == "lora":
        transformer.add_adapter(
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                target_modules=config.lora_target_modules,
                init_lora_weights="gaussian",
            )
        )
        if config.train_added_modules:
            for name, parameter in transformer.named_parameters():
                if name.startswith(ADDED_MODULES) or "modality_scale_shift_table" in name:
                    parameter.requires_grad_(True)
    added, base = [], []
    for name, parameter in transformer.named_parameters():
        if parameter.requires_grad:
            (added if name.startswith(ADDED_MODULES) or "modality_scale_shift_table" in name else base).append(
                parameter
            )
    groups = [{"params": base, "lr": config.learning_rate}]
    if added:
        groups.append({"params": added, "lr": config.learning_rate * config.added_modules_lr_multiplier})
    return [group for group in groups if group["params"]]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(save_path: Path) -> Path | None:
    checkpoints = sorted(save_path.glob("checkpoint-*"))
    return checkpoints[-1] if checkpoints else None


def train(
    config: TrainConfig, extra_loss: Callable | None = None, progress: bool = True, encode_only: bool = False
) -> Path:
    """
    Train and export; returns the export folder. `extra_loss(transformer, batch, prediction, streams, task)` adds a
    term to the loss (e.g. a perceptual loss on decoded frames); off by default, as in the authors' recipe.
    `encode_only` stops once the latent cache is built (by every process, each its share) and returns its folder.
    """
    save_path = Path(config.save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    rows_in_csv = modality_columns(config.dataset_path)
    check_deepspeed_installed()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if config.resume and latest_checkpoint(save_path) is None:
        raise ConfigError(f"resume is set but {save_path} holds no checkpoint.")
    check_sharding_plan(accelerator, config)
    if config.resume:
        check_resumable(accelerator, latest_checkpoint(save_path))
    sharded = is_sharded(accelerator)

    set_seed(config.seed)  # adapter initialisation

    # 1. Model and its modalities
    for name, prompt in config.new_modalities.items():
        if name not in known_modalities():
            register_modality(name, prompt)
        elif modality_prompt(name) != prompt:
            raise ConfigError(
                f"new_modalities: {name!r} is already known, with the prompt {modality_prompt(name)!r}; "
                "give that prompt, or another name."
            )
    transformer = load_transformer(config.model_path)
    for name in config.new_modalities:
        if name not in transformer.config.modalities:
            transformer.add_modality(name)
    modalities = config.modalities or [m for m in rows_in_csv if m in transformer.config.modalities]
    missing = [m for m in modalities if m not in rows_in_csv or m not in transformer.config.modalities]
    if not modalities or missing:
        raise ConfigError(
            f"Modalities to train {modalities} need a CSV column and a place in the model; the CSV has {rows_in_csv}, "
            f"the model {list(transformer.config.modalities)}."
        )
    if config.weights_foreground() and "segmentation" not in modalities:
        raise ConfigError(
            "foreground_loss_weight finds the objects in the segmentation videos, and this run has none: add "
            f"'segmentation' to modalities (now {modalities}; the CSV needs the column), or set foreground_loss_weight to 0."
        )

    # 2. Data: encode once (each process its share of the rows), then every rank reads the cache
    device = accelerator.device
    cache = LatentCache(config.latent_cache or save_path / "latent_cache")
    rows = read_metadata(config.dataset_path, modalities)
    held_out = LatentCache(save_path / "held_out_cache") if config.held_out_loss_every else None
    held_out_rows = read_metadata(config.held_out_dataset_path, modalities) if held_out else []
    _encode_once([(cache, rows), (held_out, held_out_rows)], transformer, modalities, config, progress, device)
    index, prompts = cache.load()
    check_cache_fits(index, cache.index_path, modalities, config)
    if encode_only:
        accelerator.end_training()
        return cache.folder
    config = dataclasses.replace(config, max_sequence_length=index["max_sequence_length"])  # as encoded
    usable = set(index["usable"])
    rows_with = {m: [r.index for r in rows if r.index in usable and m in r.modalities] for m in modalities}
    rows_with = {m: indices for m, indices in rows_with.items() if indices}
    if not rows_with:
        raise ConfigError(f"No usable training rows ({len(index['skipped'])} skipped; see {cache.index_path}).")
    if index["skipped"] and accelerator.is_main_process:
        logger.warning("Skipped %d unusable rows (reasons in %s).", len(index["skipped"]), cache.index_path)

    # 3. What trains, optimizer, EMA
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    groups = prepare_trainable(transformer, config)
    if config.compile_blocks:  # in place: parameter names, checkpoints and exports stay as they are
        transformer.compile_repeated_blocks()
    if config.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    peak_lrs = [group["lr"] for group in groups]

    steps_per_epoch = -(
        -sum(len(v) for v in rows_with.values())
        // (config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps)
    )
    total_steps = config.max_steps or config.max_epochs * max(steps_per_epoch, 1)
    configure_deepspeed(accelerator, config)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    # the optimizer's parameters after prepare: under FSDP2 these are the sharded ones that replaced the originals;
    # DeepSpeed's optimizer holds flat slices instead, and its engine the parameters
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        trainable = [p for p in transformer.parameters() if p.requires_grad]
    else:
        trainable = [p for group in optimizer.param_groups for p in group["params"]]
    trainable_names = {id(p): name for name, p in transformer.named_parameters()}
    trainable_names = [trainable_names[id(p)] for p in trainable]
    # in the model's order: accelerate's FSDP clipping compares this list with the model's parameters element-wise
    clipped = [p for p in transformer.parameters() if p.requires_grad]
    ema = None
    if config.ema_decay > 0:
        decay = config.ema_decay**config.ema_every  # one update every `ema_every` steps, as the release did
        ema = EMAModel(trainable, decay=decay, min_decay=decay)  # beside the weights: same device, same slices
    progress_state = TrainingProgress()
    accelerator.register_for_checkpointing(progress_state)
    if ema is not None and not sharded:  # accelerate saves custom objects from the main process alone
        accelerator.register_for_checkpointing(ema)

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            Path(output_dir, RUN_LAYOUT).write_text(json.dumps(run_layout(accelerator)))
        if sharded:  # accelerate writes the model's and optimizer's slices; the EMA's go beside them
            if ema is not None:
                save_sharded_ema(ema, trainable_names, Path(output_dir))
            return
        if accelerator.is_main_process:
            save_file(
                trainable_state(accelerator.unwrap_model(models[0])), os.path.join(output_dir, TRAINABLE_WEIGHTS)
            )
        weights.clear()

    def load_model_hook(models, input_dir):
        if sharded:
            if ema is not None:
                load_sharded_ema(ema, trainable_names, Path(input_dir))
            return
        model = accelerator.unwrap_model(models.pop())
        state = load_file(os.path.join(input_dir, TRAINABLE_WEIGHTS))
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"Checkpoint weights with no place in the model: {unexpected[:5]}")

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)
    if config.resume:
        accelerator.load_state(str(latest_checkpoint(save_path)))

    sampler = MultiTaskSampler(config, rows_with, accelerator.process_index, accelerator.num_processes)
    log = (save_path / "train_log.jsonl").open("a") if accelerator.is_main_process else None
    if accelerator.is_main_process:
        (save_path / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    held_out_batches = (
        _held_out_batches(held_out, held_out_rows, modalities, config, accelerator.device) if held_out else {}
    )

    def log_held_out() -> None:  # "step": optimizer updates done; sharded, every rank takes part in the forward
        if sharded:
            losses = held_out_losses(transformer, held_out_batches)
            reshard(transformer)
        elif accelerator.is_main_process:
            losses = held_out_losses(accelerator.unwrap_model(transformer), held_out_batches)
        if accelerator.is_main_process:
            log.write(json.dumps({"step": progress_state.step, "held_out": losses}) + "\n")
            log.flush()

    if held_out_batches and progress_state.step == 0:
        log_held_out()
    bar = tqdm(
        total=total_steps,
        initial=progress_state.step,
        desc="training",
        disable=not (progress and accelerator.is_main_process),
    )
    started = time.perf_counter()
    deadline = started + 60 * config.max_minutes if config.max_minutes else None

    # 4. The loop
    for step in range(progress_state.step, total_steps):
        task, modality, batches = sampler.draw(step)
        for group, peak in zip(optimizer.param_groups, peak_lrs):
            group["lr"] = peak * lr_factor(step, config.lr_warmup_steps, total_steps, config.lr_min_ratio)
        for micro, rows_in_batch in enumerate(batches):
            first = (micro * accelerator.num_processes + accelerator.process_index) * config.batch_size
            generators = [
                step_generator(config.seed, step, SAMPLE_STREAMS + first + i) for i in range(len(rows_in_batch))
            ]
            dropped = torch.cat([torch.rand(1, generator=g) for g in generators]) < config.prompt_dropout
            batch = _collate(cache, prompts, rows_in_batch, modality, config, dropped, device)
            with accelerator.accumulate(transformer):
                t, streams = _noise_samples(task, batch, config, generators)
                t = t.to(device)
                prediction = transformer(
                    hidden_states=streams.rgb.to(device),
                    timestep=t * 1000,
                    encoder_hidden_states=batch["prompt_embeds"],
                    modality_hidden_states=streams.modality.to(device),
                    modality_encoder_hidden_states=batch["modality_prompt_embeds"],
                    modality=modality,
                    task=task.name,
                    return_dict=False,
                )
                streams.rgb_target = None if streams.rgb_target is None else streams.rgb_target.to(device)
                streams.modality_target = (
                    None if streams.modality_target is None else streams.modality_target.to(device)
                )
                rgb_weight = None
                if "foreground" in batch:
                    rgb_weight = foreground_weight(batch["foreground"], config.foreground_loss_weight).to(device)
                losses = stream_losses(prediction, streams, rgb_weight=rgb_weight)
                if extra_loss is not None:
                    losses["extra"] = extra_loss(transformer, batch, prediction, streams, task)
                    losses["loss"] = losses["loss"] + losses["extra"]
                accelerator.backward(losses["loss"])
                grad_norm = (
                    accelerator.clip_grad_norm_(clipped, config.max_grad_norm) if accelerator.sync_gradients else None
                )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        progress_state.step = step + 1
        if deadline is not None and time.perf_counter() > deadline:
            accelerator.set_trigger()
        out_of_time = deadline is not None and accelerator.check_trigger()  # every rank stops at the same step
        last = out_of_time or progress_state.step == total_steps
        if ema is not None and progress_state.step % config.ema_every == 0:
            ema.step(trainable)
        if log is not None and (step % config.log_every == 0 or last):
            record = {
                "step": step,
                "elapsed": round(time.perf_counter() - started, 3),
                "task": task.name,
                "modality": modality,
                "lr": optimizer.param_groups[0]["lr"],
                **{k: float(v.detach()) for k, v in losses.items()},
                "grad_norm": float(grad_norm or 0),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
        bar.update()
        bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}", task=task.name, modality=modality)
        if held_out_batches and (progress_state.step % config.held_out_loss_every == 0 or last):
            log_held_out()
        if progress_state.step % config.checkpoint_every == 0 and not last:
            _save_checkpoint(accelerator, save_path, progress_state.step, config.keep_last_checkpoints)
        if config.validation_every and progress_state.step % config.validation_every == 0:
            if sharded:  # every rank runs the sharded model; the main process writes
                _validation_videos(
                    transformer, config, modalities[0], progress_state.step, accelerator.is_main_process
                )
                reshard(transformer)
            elif accelerator.is_main_process:
                _validation_videos(accelerator.unwrap_model(transformer), config, modalities[0], progress_state.step)
        if out_of_time:
            logger.info("max_minutes reached after %d of %d steps.", progress_state.step, total_steps)
            break
    bar.close()

    # 5. Export (and a last checkpoint, so the run can be extended), after checking the ranks agree
    held = gather_object([{"rank": accelerator.process_index, **owned_elements(transformer, optimizer)}])
    if accelerator.is_main_process:
        (save_path / "rank_memory.json").write_text(json.dumps(held, indent=2))
    if not sharded:  # each rank holds the whole model: they must hold the same one
        fingerprints = gather_object([_fingerprint(trainable)])
        if accelerator.is_main_process:
            (save_path / "rank_fingerprints.json").write_text(json.dumps(fingerprints))
        if len(set(fingerprints)) > 1:
            raise RuntimeError(f"The ranks' weights diverged: {fingerprints}")
    _save_checkpoint(accelerator, save_path, progress_state.step, config.keep_last_checkpoints)
    export = save_path / "final"
    if sharded:
        _export_gathered(accelerator, transformer, trainable_names, ema, config, save_path)
    elif accelerator.is_main_process:
        model = accelerator.unwrap_model(transformer)

        export_trained(model, export, config)
        if ema is not None:
            ema.store(trainable)
            ema.copy_to(trainable)
            export_trained(model, save_path / "final_ema", config)
            ema.restore(trainable)
    if log is not None:
        log.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export


def _export_gathered(accelerator: Accelerator, transformer, names: list[str], ema, config: TrainConfig, save_path):
    """Sharded: every rank sends its slices, the main process rebuilds the full model (no second copy of the weights)
    and writes final/ and final_ema/ exactly as an unsharded run does."""

    state = accelerator.get_state_dict(transformer)  # the full weights, on the main process only
    averaged = gather_full(ema.shadow_params) if ema is not None else None
    if not accelerator.is_main_process:
        return
    model = unsharded_copy(accelerator.unwrap_model(transformer), state, lambda m: prepare_trainable(m, config))
    export_trained(model, save_path / "final", config)
    if averaged is not None:
        model.load_state_dict(dict(zip(names, averaged)), strict=False, assign=True)
        export_trained(model, save_path / "final_ema", config)


def _noise_samples(task, batch: dict, config: TrainConfig, generators: list) -> tuple[torch.Tensor, NoisedStreams]:
    """Times and noised streams of a batch, each sample from its own generator (after its prompt-dropout draw), so a
    sample draws the same whichever process and micro-batch it falls in."""
    times, samples = [], []
    for i, generator in enumerate(generators):
        t = sample_timesteps(1, config.timestep_distribution, config.timestep_shift, generator)
        times.append(t)
        samples.append(noise_streams(task, batch["rgb"][i : i + 1], batch["modality"][i : i + 1], t, generator))

    def joined(name: str):
        parts = [getattr(sample, name) for sample in samples]
        return None if parts[0] is None else torch.cat(parts)

    return torch.cat(times), NoisedStreams(*(joined(f.name) for f in dataclasses.fields(NoisedStreams)))


def _encode_once(
    caches: list[tuple[LatentCache | None, list]],
    transformer,
    modalities: list[str],
    config: TrainConfig,
    progress: bool,
    device,
) -> None:
    """Build each incomplete cache with the VAE and text encoder of `config.model_path`, loaded once per process on
    its own device; every process encodes its share of the rows (see `encode_split`). Call on every process."""
    pending = [(cache, rows) for cache, rows in caches if cache is not None and not cache.is_complete()]
    if not pending:
        return

    pipe = UnityVideoPipeline.from_pretrained(config.model_path, transformer=transformer).to(device)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for cache, rows in pending:
            encode_split(
                cache,
                rows,
                pipe,
                modalities,
                config.num_frames,
                config.height,
                config.width,
                pipe.text_length(config.max_sequence_length),
                progress,
            )


HELD_OUT_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def _held_out_batches(cache: LatentCache, rows: list, modalities: list[str], config: TrainConfig, device) -> dict:
    """{(task, modality): [(batch, [(t, streams) per time]) per `batch_size` rows]} for every trained task x
    modality, noised once with a fixed seed so that every evaluation sees the same inputs (no prompt dropout)."""
    index, prompts = cache.load()
    tasks = [config.task] if config.task != "multi" else [t for t, w in config.task_weights.items() if w > 0]
    unbiased = dataclasses.replace(config, prompt_dropout=0.0)
    usable = set(index["usable"])
    batches = {}
    for task in map(resolve_task, tasks):
        for modality in modalities:
            with_modality = [row.index for row in rows if row.index in usable and modality in row.modalities]
            generator = torch.Generator().manual_seed(config.seed)
            chunks = []
            for start in range(0, len(with_modality), config.batch_size):
                chunk = with_modality[start : start + config.batch_size]
                dropped = torch.rand(len(chunk), generator=generator) < unbiased.prompt_dropout
                batch = _collate(cache, prompts, chunk, modality, unbiased, dropped, device)
                times = [torch.full((len(batch["rgb"]),), t) for t in HELD_OUT_TIMES]
                chunks.append(
                    (batch, [(t, noise_streams(task, batch["rgb"], batch["modality"], t, generator)) for t in times])
                )
            if chunks:
                batches[(task, modality)] = chunks
    return batches


@torch.no_grad()
def held_out_losses(transformer, batches: dict) -> dict[str, float]:
    """Mean velocity MSE over rows and HELD_OUT_TIMES for each "task/modality": the training loss, on held-out rows."""
    was_training = transformer.training
    transformer.eval()
    device = next(transformer.parameters()).device
    losses = {}
    for (task, modality), chunks in batches.items():
        values = []
        for batch, noised in chunks:
            for t, streams in noised:
                prediction = transformer(
                    hidden_states=streams.rgb.to(device),
                    timestep=(t * 1000).to(device),
                    encoder_hidden_states=batch["prompt_embeds"],
                    modality_hidden_states=streams.modality.to(device),
                    modality_encoder_hidden_states=batch["modality_prompt_embeds"],
                    modality=modality,
                    task=task.name,
                    return_dict=False,
                )
                targets = {
                    k: None if v is None else v.to(device)
                    for k, v in (("rgb_target", streams.rgb_target), ("modality_target", streams.modality_target))
                }
                values.append(
                    (float(stream_losses(prediction, dataclasses.replace(streams, **targets))["loss"]), len(t))
                )
        losses[f"{task.name}/{modality}"] = sum(v * n for v, n in values) / sum(n for _, n in values)
    transformer.train(was_training)
    return losses


def _collate(
    cache: LatentCache,
    prompts: dict,
    rows: list[int],
    modality: str,
    config: TrainConfig,
    dropped: torch.Tensor,
    device,
) -> dict:
    """Latents and texts of `rows`; the RGB prompts where `dropped` is true are made empty (prompt dropout)."""
    samples = [cache.sample(row) for row in rows]
    length = config.max_sequence_length
    texts = [prompts["empty"] if drop else sample["prompt_embeds"] for drop, sample in zip(dropped, samples)]
    batch = {
        "rgb": torch.stack([s["rgb"] for s in samples]),
        "modality": torch.stack([s[f"modality.{modality}"] for s in samples]),
        "prompt_embeds": torch.stack([pad_tokens(text, length) for text in texts]).to(device),
        "modality_prompt_embeds": pad_tokens(prompts[f"modality.{modality}"][:length], length)
        .expand(len(rows), -1, -1)
        .to(device),
    }
    if config.weights_foreground():  # a row without a segmentation video is weighted uniformly
        grid = batch["rgb"].shape[-3:]
        batch["foreground"] = torch.stack([s.get("foreground", torch.zeros(grid, dtype=torch.bool)) for s in samples])
    return batch


@torch.no_grad()
def _validation_videos(transformer, config: TrainConfig, modality: str, step: int, write: bool = True) -> None:
    """Generate `validation_prompts` with the model as it is now, into save_path/validation/step-N/ (when `write`:
    a sharded model generates on every rank, and one writes)."""

    pipe = UnityVideoPipeline.from_pretrained(config.model_path, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    folder = Path(config.save_path) / "validation" / f"step-{step:07d}"
    was_training = transformer.training
    transformer.eval()
    for index, prompt in enumerate(config.validation_prompts):
        out = pipe(
            prompt,
            modality=modality,
            num_frames=config.num_frames,
            height=config.height,
            width=config.width,
            num_inference_steps=config.validation_steps,
            generator=torch.Generator().manual_seed(config.seed),
        )
        if write:
            save_video(out.frames[0], folder / f"{index:02d}_rgb.mp4")
            save_video(out.modality_frames[0], folder / f"{index:02d}_{modality}.mp4")
    transformer.train(was_training)


def _fingerprint(parameters: list[torch.Tensor]) -> str:
    """A digest of the exact bytes of the trainable weights, to compare ranks."""

    digest = hashlib.sha256()
    for parameter in parameters:
        digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _save_checkpoint(accelerator: Accelerator, save_path: Path, step: int, keep_last: int) -> None:
    """accelerate's full state into a temporary folder renamed into place; the oldest beyond `keep_last` go."""
    final = save_path / f"checkpoint-{step:07d}"
    partial = save_path / f".checkpoint-{step:07d}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in sorted(save_path.glob("checkpoint-*"))[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
