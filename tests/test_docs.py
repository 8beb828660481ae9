"""Every ```python block of docs/ runs, page by page, against tiny offline components, so the docs cannot rot.

The workspace stands in for a user's: `unityvideo-5b` is a tiny pipeline folder, `clip.mp4` a video, and
`data/metadata.csv` a small dataset with a `albedo` column.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from unityvideo_diffusers import UnityVideoPipeline
from unityvideo_diffusers.testing import tiny_pipeline_components
from unityvideo_diffusers.video_io import save_video


DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(root / "unityvideo-5b")
    rng = np.random.default_rng(0)
    save_video(rng.random((33, 64, 64, 3)), root / "clip.mp4")
    rows = []
    for i in range(2):
        for kind in ("rgb", "albedo"):
            save_video(rng.random((9, 64, 64, 3)), root / "data" / f"{kind}{i}")
        rows.append({"video": f"rgb{i}", "prompt": f"clip {i}", "albedo": f"albedo{i}"})
    with open(root / "data" / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "albedo"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_every_page_is_linked_and_has_code():
    quickstart = (DOCS / "quickstart.md").read_text()
    for page in PAGES:
        assert page.name == "quickstart.md" or f"]({page.name})" in quickstart, page.name
        assert "```" in page.read_text(), page.name


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.stem)
def test_page_code_runs(page, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    namespace = {"__name__": f"docs_{page.stem}"}
    for block in python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)


def anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_and_anchor_resolves():
    root = DOCS.parent
    pages = [root / "README.md", root / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(root)}: {target}")
            elif fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                if fragment not in {anchor(h) for h in headings}:
                    broken.append(f"{page.relative_to(root)}: {target} (no such heading)")
    assert not broken, broken
