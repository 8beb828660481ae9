"""The demo model: a small UnityVideo trained only on ShapesWorld, with this project's own code, by one command.

    python -m unityvideo_diffusers.shapesworld.recipe --output models/shapesworld-demo

1. ShapesWorld data (17 frames at 64 x 64, objects of 0.3-0.45 of the height starting near the middle and moving
   0.4-0.6 of the frame; the held-out colour x shape pairs stay out of training).
2. A byte-level BPE tokenizer fitted to the world's prompts (texts padded to 32 tokens), and a small UMT5 text encoder
   at its seeded random initialisation with each attention head fixed on one neighbouring token: the vocabulary is
   closed and tiny, so fixed random contextual features already separate every prompt, and the transformer's text
   projection learns to read them; the fixed heads tie each colour word to the shape word beside it.
3. A Wan2.2-style VAE (residual, patch 2), cut to 8x spatial and 4x temporal with 16 channels, trained on every
   stream's frames with its loss weighted towards the objects. Wan2.2's residual blocks carry parameter-free
   space-to-channel shortcuts, so the untrained VAE already starts near a pixel (un)shuffle: here it trains 2.3x
   faster per step than a Wan2.1-style stack of the same width and reaches in 1000 steps a loss the Wan2.1 stack had
   not reached after 500 (it was at 0.42, and spiking). 8x rather than Wan2.2's 16x: at 64 x 64, 16x leaves 2 x 2
   tokens per frame after the transformer's patch, too coarse for objects a few pixels wide; 8x keeps 4 x 4. (4x VAEs
   with finer tokens reconstruct shape and motion better, but a transformer step costs more and, in this budget, the
   transformers behind them estimated far worse: docs/research/shapesworld_runs.md.) The pipelines take any such VAE from its config.
4. A small UnityVideoTransformer3DModel for ShapesWorld's modalities, trained with the multi-task recipe
   (`unityvideo_diffusers.training`), its RGB loss weighted towards the objects and its blocks compiled, then a
   finishing phase from its EMA weights that gives half of its steps to estimating optical flow (FINISH), until the
   budget runs out; exported from the finishing phase's EMA weights.

`--minutes` is the whole budget; the VAE gets `--vae-share` of it and the transformer the rest, the last
`--finish-share` of the transformer's steps in the finishing phase.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ..modalities import SEGMENTATION_PALETTE, modality_prompt
from ..models import UnityVideoTransformer3DModel
from ..pipelines import UnityVideoPipeline
from ..training import TrainConfig, train
from ..training.trainer import latest_checkpoint
from ..video_io import load_frames
from .world import DEMO_WORLD, MODALITY_COLUMNS, WorldConfig, write_split


NEW_MODALITIES = {name: modality_prompt(name) for name in ("normal", "edge")}  # beyond the released five
TRANSFORMER = dict(
    num_attention_heads=4,
    attention_head_dim=24,
    num_layers=4,
    ffn_dim=384,
    in_channels=16,
    out_channels=16,
    text_dim=64,
    freq_dim=64,
    modalities=["depth", "raft", "segmentation", *NEW_MODALITIES],
)
VAE = dict(
    base_dim=16,
    z_dim=16,
    dim_mult=[1, 2, 2],
    num_res_blocks=1,
    temperal_downsample=[True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=8,
    scale_factor_temporal=4,
)
TEXT_TOKENS = 32  # the world's longest prompt has 19; padding to Wan's 512 made half of a step cross-attention to pads
NEIGHBOUR_OFFSETS = (0, -1, 1, 2)  # the text encoder's heads, each fixed on the token at this offset
STREAMS = ("rgb", *MODALITY_COLUMNS)
# The model folder's sampling defaults: its size and length, and the fewest UniPC steps that sample each job as well
# as the authors' 20 unshifted Euler steps on the held-out clips, within their seed-to-seed spread, without guidance
# (benchmarks/sampling_defaults.py). The folder's UniPC shifts by 3, not by the training shift 5: at 3 steps the
# joint job reaches the authors' quality only at shift 2 or 3, which spend more of so few steps at low noise.
SAMPLING_DEFAULTS = {
    job: dict(height=64, width=64, num_frames=17, num_inference_steps=steps, guidance_scale=1.0)
    for job, steps in (("joint", 3), ("control", 2), ("perception", 1))
}
SAMPLING_FLOW_SHIFT = 3.0
# The transformer's run ends with a finishing phase on the same data, from the main phase's EMA weights. Optical flow
# is the one estimate that compares frames, and it is learned late: spread over a whole run, 2.5x its share of the
# estimation steps moved it 1.5 % (r16), while 20k steps of flow estimation alone from a trained model took it from
# 1.73 to 0.71 px on moving pixels but erased every other skill. So half of the finishing steps estimate flow and
# the other half keep the main mix, each of its task x modality pairs at half its main-phase rate.
FINISH = dict(
    task_weights={"joint": 0.25, "perception": 0.625, "control": 0.125},
    task_modality_weights={"perception": {"depth": 1, "raft": 16, "segmentation": 1, "normal": 1, "edge": 1}},
    learning_rate=3e-4,
)


def fit_tokenizer(prompts: list[str]):

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(prompts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=TEXT_TOKENS,
    )


def local_text_encoder(vocab_size: int, seed: int, offsets: tuple[int, ...] = NEIGHBOUR_OFFSETS):
    """A small UMT5 encoder at its seeded initialisation, except that each attention head of every layer looks only
    at one neighbour (one head per entry of `offsets`), through its relative-position bias.

    At plain random initialisation the encoder mixes nothing: a word's output has cosine 1.000 to itself whatever its
    neighbours ("ball" in "red ball and blue cube" and in "blue ball and red cube"), so the transformer cannot tell
    which colour belongs to which object. Fixed neighbour heads make each word's feature carry the words beside it."""

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TRANSFORMER["text_dim"],
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=len(offsets),
        relative_attention_num_buckets=16,
        pad_token_id=0,
        eos_token_id=1,
    )
    encoder = UMT5EncoderModel(config).eval()
    with torch.no_grad():
        for block in encoder.encoder.block:
            attention = block.layer[0].SelfAttention
            buckets = attention._relative_position_bucket(torch.tensor(offsets))
            bias = torch.full_like(
                attention.relative_attention_bias.weight, -30.0
            )  # e^-30: no weight off the neighbour
            bias[buckets, torch.arange(len(offsets))] = 0.0
            attention.relative_attention_bias.weight.copy_(bias)
    return encoder


def clip_tensors(csv_root: Path, frames: int) -> list[torch.Tensor]:
    """Every stream of every clip as a (3, F, H, W) tensor in [-1, 1] (a clip with several captions once)."""

    videos, seen = [], set()
    with open(csv_root / "metadata.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["video"] in seen:
                continue
            seen.add(row["video"])
            for column in ("video", *MODALITY_COLUMNS):  # STREAMS order
                array = np.stack(
                    [np.asarray(f, dtype=np.float32) / 127.5 - 1 for f in load_frames(csv_root / row[column])]
                )
                videos.append(torch.from_numpy(array[:frames]).permute(3, 0, 1, 2))
    return videos


def decode_unclamped(vae, latents: torch.Tensor) -> torch.Tensor:
    """`vae.decode` without its final clamp to [-1, 1]: the clamp has zero gradient wherever the untrained decoder
    overshoots, which stalls training. Same causal frame-by-frame decoding as diffusers' `AutoencoderKLWan._decode`."""

    vae.clear_cache()
    hidden = vae.post_quant_conv(latents)
    frames = []
    for index in range(latents.shape[2]):
        vae._conv_idx = [0]
        frame = hidden[:, :, index : index + 1]
        frames.append(vae.decoder(frame, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=index == 0))
    vae.clear_cache()
    video = torch.cat(frames, dim=2)
    return unpatchify(video, patch_size=vae.config.patch_size) if vae.config.patch_size else video


def object_weights(videos: list[torch.Tensor], weight: float) -> list[torch.Tensor]:
    """Per stream, (1, F, H, W) pixel weights for the reconstruction loss: 1 + `weight` on and next to the clip's
    objects (read from its segmentation stream; `videos` in STREAMS order)."""

    background = torch.tensor(SEGMENTATION_PALETTE[0], dtype=torch.float32).view(3, 1, 1, 1) / 127.5 - 1
    weights = []
    for start in range(0, len(videos), len(STREAMS)):
        segmentation = videos[start + STREAMS.index("segmentation")]
        mask = ((segmentation - background).abs().amax(0, keepdim=True) > 0.1).float()
        mask = torch.nn.functional.max_pool2d(mask[0], 3, stride=1, padding=1)[None]  # the blurred edge counts too
        weights += [1 + weight * mask] * len(STREAMS)
    return weights


def train_vae(
    videos: list[torch.Tensor],
    seconds: float,
    seed: int,
    crop: int = 32,
    batch_size: int = 4,
    learning_rate: float = 1e-3,
    object_weight: float = 0.0,
    log=print,
):
    """L1 + MSE reconstruction of the posterior mode (a tiny KL term keeps the log-variance bounded), on random
    `crop`-pixel windows of every stream, each pixel weighted 1 + `object_weight` on the objects (0, the bundled
    recipe: unweighted); the learning rate follows a cosine over the time budget.

    Objects are a few percent of the pixels, and unweighted the VAE spends itself on the background: at equal time
    (24 min, 8x VAE) `object_weight` 10 against 0 left 1 against 8 of 40 objects vanished in reconstruction
    (docs/research/shapesworld_runs.md has the other measurements).

    Windows span whole clips: the causal VAE treats its first, second and later latent frames differently (through
    its frame cache), and one trained on 5-frame windows reconstructed frames 9-17 at 13-20 dB PSNR against 19-27 dB
    for frames 1-5. Crops are safe: it is convolutional, and full 64 x 64 frames scored as well as 32 x 32 crops."""

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**VAE)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    weights = object_weights(videos, object_weight)
    _, _, height, width = videos[0].shape
    started, step = time.perf_counter(), 0
    while step == 0 or time.perf_counter() - started < seconds:  # at least one step, however short the budget
        elapsed = time.perf_counter() - started
        picks = torch.randint(len(videos), (batch_size,), generator=generator).tolist()
        tops = torch.randint(height - crop + 1, (batch_size,), generator=generator).tolist()
        lefts = torch.randint(width - crop + 1, (batch_size,), generator=generator).tolist()
        windows = [(slice(None), slice(None), slice(y, y + crop), slice(x, x + crop)) for y, x in zip(tops, lefts)]
        batch = torch.stack([videos[i][window] for i, window in zip(picks, windows)])
        weight = torch.stack([weights[i][window] for i, window in zip(picks, windows)])
        posterior = vae.encode(batch).latent_dist
        error = decode_unclamped(vae, posterior.mode()) - batch
        loss = ((error.abs() + error.square()) * weight).mean() / weight.mean() + 1e-6 * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, elapsed / seconds))))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 200 == 0:
            log(f"vae step {step}: loss {loss.item():.4f} ({elapsed:.0f} s)")
    vae.eval()
    return vae, step


@torch.no_grad()
def reconstruction_psnr(vae, videos: list[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR (dB, pixels in [0, 1]) of encode -> decode per stream; `videos` are clips' streams in STREAMS order."""
    scores = {name: [] for name in STREAMS}
    for index, video in enumerate(videos):
        reconstruction = vae.decode(vae.encode(video[None]).latent_dist.mode()).sample[0]
        mse = (reconstruction - video).square().mean().item() / 4
        scores[STREAMS[index % len(STREAMS)]].append(10 * math.log10(1 / max(mse, 1e-10)))
    return {name: round(sum(values) / len(values), 1) for name, values in scores.items() if values}


@torch.no_grad()
def latent_statistics(vae, videos: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the VAE's latents over the data, for the pipelines' normalisation."""
    latents = torch.cat(
        [vae.encode(v[None]).latent_dist.mode().flatten(2) for v in videos[:: max(1, len(videos) // 200)]], dim=2
    )
    return latents.mean(dim=(0, 2)).tolist(), latents.std(dim=(0, 2)).clamp_min(1e-3).tolist()


def time_training_step(transformer, vae, batch_size: int, frames: int, size: int) -> float:
    """Seconds of one forward + backward of `transformer`, its blocks compiled as in training, on a joint batch of the
    world's size (median of 3 after the compiling ones)."""

    model = copy.deepcopy(transformer).train()
    model.compile_repeated_blocks()
    config = model.config
    latent_size = size // vae.config.scale_factor_spatial
    shape = (
        batch_size,
        config.in_channels,
        (frames - 1) // vae.config.scale_factor_temporal + 1,
        latent_size,
        latent_size,
    )
    text = torch.randn(batch_size, TEXT_TOKENS, config.text_dim)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        out = model(
            torch.randn(shape), torch.rand(batch_size) * 1000, text, torch.randn(shape), text, modality="depth"
        )
        (out.sample.square().mean() + out.modality_sample.square().mean()).backward()
        times.append(time.perf_counter() - start)
    return sorted(times[3:])[1] * 1.15  # + the optimizer step and data


def train_config(work: Path, save_path: Path, steps: int, **overrides):
    """The transformer's training run of the recipe: full fine-tuning of `work`/initial on the world's training split
    with the multi-task recipe (`overrides` change it, e.g. for the single-task comparison)."""

    values = dict(
        model_path=str(work / "initial"),
        dataset_path=str(work / "shapesworld" / "train" / "metadata.csv"),
        save_path=str(save_path),
        training_mode="full",
        max_steps=steps,
        num_frames=17,
        height=64,
        width=64,
        batch_size=4,
        learning_rate=5e-4,
        lr_warmup_steps=min(200, steps // 10),
        lr_min_ratio=0.1,
        gradient_checkpointing=False,
        checkpoint_every=max(100, steps // 10),
        ema_decay=0.999,
        ema_every=1,
        new_modalities=NEW_MODALITIES,
        log_every=25,
        compile_blocks=True,
        foreground_loss_weight=10.0,
    )
    return TrainConfig(**{**values, **overrides})


def finish_config(work: Path, main_run: Path, save_path: Path, steps: int, **overrides):
    """The finishing phase (FINISH): `main_run`'s EMA weights trained on, on its latent cache."""
    return train_config(
        work,
        save_path,
        steps,
        model_path=str(main_run / "final_ema"),
        latent_cache=str(main_run / "latent_cache"),
        **{**FINISH, **overrides},
    )


def build(
    output: str | Path,
    minutes: float = 85.0,
    vae_share: float = 0.3,
    train_clips: int = 400,
    eval_clips: int = 40,
    seed: int = 0,
    work: str | Path | None = None,
    vae_object_weight: float = 10.0,
    captions: int = 1,
    finish_share: float = 0.35,
    log=print,
) -> Path:
    """Run the whole recipe; returns the demo pipeline folder."""

    started = time.perf_counter()
    budget = minutes * 60
    output = Path(output)
    work = Path(work) if work else output.with_name(output.name + ".work")
    world = WorldConfig(**DEMO_WORLD)
    processes = os.cpu_count() or 1
    csv_path = write_split(work / "shapesworld", "train", train_clips, seed, world, processes, captions)
    write_split(work / "shapesworld", "eval", eval_clips, seed, world, processes)
    log(f"data: {csv_path} ({time.perf_counter() - started:.0f} s)")

    prompts = [row["prompt"] for row in csv.DictReader(open(csv_path))] + [""] + [p for p in NEW_MODALITIES.values()]
    tokenizer = fit_tokenizer(prompts)
    text_encoder = local_text_encoder(len(tokenizer), seed)

    videos = clip_tensors(csv_path.parent, world.frames)
    vae, vae_steps = train_vae(
        videos, vae_share * budget - (time.perf_counter() - started), seed, object_weight=vae_object_weight, log=log
    )
    mean, std = latent_statistics(vae, videos)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    vae_psnr = reconstruction_psnr(vae, clip_tensors(work / "shapesworld" / "eval", world.frames)[: 8 * len(STREAMS)])
    log(f"vae: {vae_steps} steps, held-out reconstruction PSNR {vae_psnr} dB ({time.perf_counter() - started:.0f} s)")

    initial = work / "initial"
    transformer = UnityVideoTransformer3DModel(**TRANSFORMER)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SAMPLING_FLOW_SHIFT
    )
    UnityVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        sampling_defaults=SAMPLING_DEFAULTS,
    ).save_pretrained(initial)

    seconds_per_step = time_training_step(transformer, vae, batch_size=4, frames=world.frames, size=world.height)
    # the trainer encodes the data once (loading, cropping, every stream in one VAE call, text): time one clip's worth
    start = time.perf_counter()
    with torch.no_grad():
        vae.encode(torch.stack(videos[: len(STREAMS)]))
        for stream in STREAMS:
            load_frames(csv_path.parent / "00000" / stream)
    encode_seconds = (
        1.5 * (time.perf_counter() - start) * len(videos) / len(STREAMS)
    )  # a clip's other captions: text only
    reserve = encode_seconds + 0.02 * budget + 60  # encoding the data once, checkpoints and export
    steps = max(10, int((budget - (time.perf_counter() - started) - reserve) / seconds_per_step))
    finish_steps = int(finish_share * steps)
    log(
        f"transformer: about {seconds_per_step:.3f} s/step; training {steps} steps, the last {finish_steps} of them the "
        "finishing phase"
    )

    run, finish = work / "run", work / "finish"

    def minutes_left(reserve_seconds: float) -> float:  # the clock stops a loop if this machine is slower than timed
        return max(0.05, (budget - (time.perf_counter() - started) - reserve_seconds) / 60)

    train(
        train_config(work, run, steps - finish_steps, max_minutes=minutes_left(60 + finish_steps * seconds_per_step))
    )
    trained_steps = int(latest_checkpoint(run).name.removeprefix("checkpoint-"))
    exported, finished_steps = run / "final_ema", 0
    if finish_steps:
        train(finish_config(work, run, finish, finish_steps, max_minutes=minutes_left(60)))
        finished_steps = int(latest_checkpoint(finish).name.removeprefix("checkpoint-"))
        exported = finish / "final_ema"

    pipe = UnityVideoPipeline.from_pretrained(initial)
    pipe.transformer = UnityVideoTransformer3DModel.from_pretrained(exported / "transformer")
    if output.exists():
        shutil.rmtree(output)
    pipe.save_pretrained(output)
    (output / "recipe.json").write_text(
        json.dumps(
            {
                "minutes": minutes,
                "vae_steps": vae_steps,
                "vae_object_weight": vae_object_weight,
                "vae_psnr_db": vae_psnr,
                "transformer_steps": trained_steps,
                "finish_steps": finished_steps,
                "seed": seed,
                "train_clips": train_clips,
                "captions": captions,
                "seconds": round(time.perf_counter() - started),
                "exported_from": str(exported.relative_to(work)),
            },
            indent=2,
        )
    )
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    log(f"demo model: {output} ({size / 2**20:.1f} MiB, {(time.perf_counter() - started) / 60:.1f} min)")
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument(
        "--minutes", type=float, default=85.0, help="the whole budget (the bundled model: 85, on a 2-core CPU)"
    )
    parser.add_argument("--vae-share", type=float, default=0.3)
    parser.add_argument(
        "--finish-share",
        type=float,
        default=0.35,
        help="share of the transformer's steps in the finishing phase (FINISH; 0: none)",
    )
    parser.add_argument("--train-clips", type=int, default=400)
    parser.add_argument(
        "--captions", type=int, default=1, help="rows per training clip: its caption, then partial ones (shapesworld)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vae-object-weight",
        type=float,
        default=10.0,
        help="extra loss weight of the VAE on and next to the objects (0: unweighted)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.vae_share < 1 or args.minutes <= 0 or not math.isfinite(args.minutes):
        parser.error("--minutes must be positive and --vae-share in (0, 1).")
    if not 0 <= args.finish_share < 1:
        parser.error(f"--finish-share must be in [0, 1), got {args.finish_share}.")
    if args.captions < 1:
        parser.error(f"--captions must be >= 1, got {args.captions}.")
    if not 0 <= args.vae_object_weight < math.inf:
        parser.error(f"--vae-object-weight must be a finite number >= 0, got {args.vae_object_weight}.")
    build(
        args.output,
        args.minutes,
        args.vae_share,
        args.train_clips,
        seed=args.seed,
        vae_object_weight=args.vae_object_weight,
        captions=args.captions,
        finish_share=args.finish_share,
    )


if __name__ == "__main__":
    main()
