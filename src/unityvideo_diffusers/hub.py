"""Publishing to the Hugging Face Hub: a generated model card and one upload of a complete folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError


CARD_NAME = "README.md"


def network_errors() -> tuple[type[BaseException], ...]:
    """What a request to the Hub raises when it cannot be reached or refuses: huggingface_hub's own HTTP errors are
    OSErrors, but its HTTP library's connection errors (httpx's for huggingface_hub >= 1, a base of its HTTP error
    class) are not."""

    library_errors = [base for base in HfHubHTTPError.__mro__[1:] if base.__name__ == "HTTPError"]
    return (OSError, *library_errors)


def model_card(folder: str | os.PathLike, repo_id: str, base_model: str = "KlingTeam/UnityVideo") -> str:
    """A model card for a UnityVideo folder: metadata, what it does, the modalities, usage and training settings."""
    folder = Path(folder)
    transformer = folder / "transformer" / "config.json"
    config = json.loads(transformer.read_text()) if transformer.is_file() else {}
    modalities = config.get("modalities", [])
    training = {}
    for name in ("train_config.json", "unityvideo_training.json"):
        if (folder / name).is_file():
            training.update(json.loads((folder / name).read_text()))
    tags = ["unityvideo", "diffusers", "video-generation", "text-to-video", "video-to-video", *sorted(modalities)]
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: diffusers",
        "pipeline_tag: text-to-video",
        f"base_model: {base_model}",
        "tags:",
        *[f"- {tag}" for tag in tags],
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        "A [UnityVideo](https://arxiv.org/abs/2512.07831) pipeline for diffusers: one video diffusion transformer for",
        "text -> video with a jointly generated modality video, modality -> video (control), and video -> modality",
        "(estimation). Load it with [unityvideo-diffusers](https://pypi.org/project/unityvideo-diffusers/).",
        "",
        f"Modalities: {', '.join(modalities) if modalities else 'see transformer/config.json'}.",
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from unityvideo_diffusers import UnityVideoPipeline, UnityVideoControlPipeline, UnityVideoPerceptionPipeline",
        "",
        f'pipe = UnityVideoPipeline.from_pretrained("{repo_id}", dtype=torch.bfloat16).to("cuda")',
        'out = pipe("a red ball bouncing on a wooden floor", modality="depth", num_frames=33, height=256, width=256)',
        'depth_video = UnityVideoPerceptionPipeline.from_pipe(pipe)(video="clip.mp4", modality="depth").modality_frames[0]',
        "```",
    ]
    if training:
        lines += ["", "## Training", "", "```json", json.dumps(training, indent=2, default=str), "```"]
    if config:
        size = f"{config.get('num_layers')} layers, {config.get('num_attention_heads')} x {config.get('attention_head_dim')} heads"
        lines += [
            "",
            "## Model",
            "",
            f"`UnityVideoTransformer3DModel`: {size}, {config.get('in_channels')} latent channels.",
        ]
    return "\n".join(lines) + "\n"


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or any(not part for part in repo_id.split("/")):
        raise ValueError(f"--repo-id must look like owner/name, got {repo_id!r}.")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    base_model: str = "KlingTeam/UnityVideo",
    overwrite_card: bool = False,
):
    """Create `repo_id` if needed and upload `folder` with a model card (kept if the folder already has one)."""

    folder = Path(folder)
    markers = ("model_index.json", "config.json", "transformer/config.json")
    if not any((folder / marker).is_file() for marker in markers):
        raise ValueError(f"{folder} is not a diffusers folder (none of {', '.join(markers)}).")
    check_repo_id(repo_id)
    card = folder / CARD_NAME
    if overwrite_card or not card.is_file():
        card.write_text(model_card(folder, repo_id, base_model))
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=getattr(repo, "repo_id", repo_id),
        folder_path=str(folder),
        commit_message=commit_message or "Upload UnityVideo pipeline",
        create_pr=create_pr,
    )
