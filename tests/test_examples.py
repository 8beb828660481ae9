"""The offline example (tiny random components, no bundled model needed): keep it working."""

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_offline_quickstart_writes_four_videos(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart_offline.py"), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["control_rgb.mp4", "joint_depth.mp4", "joint_rgb.mp4", "perception_depth.mp4"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)
