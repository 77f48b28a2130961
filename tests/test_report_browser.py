"""The report as a browser shows it: headless Chromium renders ``report.html`` of a tiny finished
run; the screenshot must not be blank and the page's DOM must hold the tables.

Skipped only when no Chromium is installed here (Debian: ``apt-get install chromium``); CI
installs it (``.ci/run``) and sets ``WSSS_REQUIRE_BROWSER=1``, which turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.pipeline.report import build_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="session")
def browser() -> str:
    """Chromium's path (looked for before the run fixture builds anything)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("WSSS_REQUIRE_BROWSER") == "1":
        pytest.fail("WSSS_REQUIRE_BROWSER=1 but no Chromium is installed (apt-get install chromium)")
    pytest.skip("Chromium is not installed here (apt-get install chromium); CI installs it")


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_report_renders_in_a_browser_with_its_tables_and_pictures(browser, finished_run, tmp_path: Path) -> None:
    html_path, _ = build_report(finished_run.work, tmp_path / "report")
    url = html_path.resolve().as_uri()

    shot = tmp_path / "screenshot.png"  # one start: the screenshot, and the DOM on stdout
    done = _headless(browser, tmp_path / "profile", "--dump-dom", f"--screenshot={shot}",
                     "--window-size=1280,4800", url)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    page = done.stdout
    assert page.count("<table>") == 5  # results, seeds, pseudo masks, final segmentation, stages
    headers = re.findall(r"<th>([^<]*)</th>", page)
    assert "seed mIoU, oracle t" in headers and "mIoU" in headers and "background" in headers
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 7

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape[:2] == (4800, 1280)
    not_white = (pixels < 235).any(axis=2).mean()
    assert 0.03 < not_white < 0.9, not_white  # text, tables and figures on a white page
    colourful = (pixels.max(axis=2) - pixels.min(axis=2) > 80).mean()
    assert colourful > 0.002, colourful  # the pictures were decoded and drawn (curves, heat maps)
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert len(colours) > 200  # not a few flat colours
