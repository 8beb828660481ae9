"""The web demo driven end to end in a real headless browser (Debian's Chromium through Playwright)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from unityvideo_diffusers import UnityVideoPipeline
from unityvideo_diffusers.testing import tiny_pipeline_components


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    model = tmp_path / "model"
    UnityVideoPipeline(**tiny_pipeline_components()).save_pretrained(model)
    port = free_port()
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "unityvideo_diffusers", "demo", "--model", str(model), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(process.stdout.read().decode()[-3000:])
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the demo did not start within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_demo_generates_in_a_headless_browser(server):
    assert os.path.exists(CHROMIUM), (
        "needs Debian's chromium: apt-get install chromium (the README's test command does)"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        page = browser.new_page()
        page.goto(server, wait_until="domcontentloaded")
        page.locator("#t2v-prompt textarea").fill("a red ball bouncing")
        page.locator("#t2v-generate").click()
        video = page.locator("#t2v-video video")
        video.wait_for(state="attached", timeout=180_000)
        assert video.get_attribute("src")
        assert page.locator("#t2v-modality video").get_attribute("src")
        browser.close()
