"""`medr1 trace report` opened in a real headless Chromium (from the distribution's packages,
installed here when missing): screenshots of a case page and of the index are checked for the
image and the text, and every link from a number resolves to an anchored row."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from trace_fixtures import GREEN, MAGENTA, reasoning_of, write_eval_dir

from pipelines.cli.main import main


def _install_chromium() -> str:
    """Debian's chromium via apt-get (root, or sudo without a password); the set-up a fresh machine needs."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(sudo + cmd, capture_output=True, text=True, env=env, timeout=1200)
        if r.returncode != 0:
            pytest.fail(f"could not install chromium with {' '.join(sudo + cmd)}: {r.stderr[-500:]}")
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    return _install_chromium()


def _browser(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1000,1300", *args], capture_output=True, text=True, timeout=120)


def screenshot(chromium: str, page: Path, png: Path) -> np.ndarray:
    _browser(chromium, f"--screenshot={png}", page.as_uri())
    assert png.is_file(), f"chromium wrote no screenshot of {page}"
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def dom(chromium: str, page: Path) -> str:
    r = _browser(chromium, "--dump-dom", page.as_uri())
    assert "<html" in r.stdout, r.stderr[-500:]
    return r.stdout


def count(img: np.ndarray, rgb, tol: int = 8) -> int:
    return int((np.abs(img - np.array(rgb)).max(axis=2) <= tol).sum())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    write_eval_dir(tmp / "ev")
    assert main(["trace", "report", str(tmp / "ev"), "--out", str(tmp / "html")]) == 0
    return tmp / "html"


def test_case_pages_show_the_image_and_the_reasoning(chromium, report, tmp_path):
    magenta = screenshot(chromium, report / "cases" / "eval-3.html", tmp_path / "case3.png")
    green = screenshot(chromium, report / "cases" / "eval-4.html", tmp_path / "case4.png")
    shown = 224 * 224  # the page draws the 112 px image at least 224 px wide
    assert count(magenta, MAGENTA) >= 0.9 * shown and count(magenta, GREEN) == 0
    assert count(green, GREEN) >= 0.9 * shown and count(green, MAGENTA) == 0
    assert (np.abs(magenta - green).max(axis=2) > 0).sum() >= 0.9 * shown, "the pages differ where the image is"
    assert count(magenta, (255, 255, 255)) > 0.3 * magenta.shape[0] * magenta.shape[1], "page background"
    assert (magenta.max(axis=2) < 80).sum() > 2000, "dark text is drawn"
    page = dom(chromium, report / "cases" / "eval-3.html")
    assert reasoning_of(3) in page and "Which modality is image 3?" in page
    assert re.search(r'id="answer">predicted <b>A</b>, truth <b>A</b>', page)


def test_index_numbers_link_to_existing_row_anchors(chromium, report, tmp_path):
    index_img = screenshot(chromium, report / "index.html", tmp_path / "index.png")
    assert (index_img.max(axis=2) < 80).sum() > 2000, "the index is not blank"
    index, rows = dom(chromium, report / "index.html"), dom(chromium, report / "rows.html")
    assert "0.333" in index and "3 / 9" in index  # hand count: p0, p3, p6 right out of 9
    links = re.findall(r'href="rows\.html#([^"]+)"', index)
    ids = set(re.findall(r'id="([^"]+)"', rows))
    assert len(links) >= 8 and set(links) <= ids, f"unresolved: {set(links) - ids}"
    # the rows behind "CT 3 / 3" are the CT rows, each linking to its case page
    ct = rows.split('id="e0-modality-ct"')[1].split("</section>")[0]
    assert sorted(re.findall(r'href="cases/(eval-\d+)\.html"', ct)) == ["eval-0", "eval-3", "eval-6"]
    for case in re.findall(r'href="(cases/[^"]+)"', rows):
        assert (report / case).is_file(), case
    wrong = rows.split('id="e0-wrong"')[1].split("</section>")[0]
    assert len(re.findall(r'data-correct="0"', wrong)) == 6 and 'data-correct="1"' not in wrong
