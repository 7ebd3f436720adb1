"""`omtseg app` in a real browser: headless Chromium (Debian's package) driven by Playwright.

The app runs as a user starts it (`omtseg app --ckpt ...`, a subprocess on localhost) with a tiny random
segmenter and an untrained captioner; the page gets an image and classes, and must show the overlay, a
segment table with those class names, the hovered segment highlighted, a caption for a clicked point, and a
clear error for a file that is not an image. A screenshot lands in the test's folder (``app.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _tiny_segmenter import CAPTION_WORDS, IMAGE_SIZE, make_captioner, make_checkpoint, make_images

from omtseg.commands.app import decode_image, parse_classes, presets

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update",
]
CLASSES = "cat\ndog\ntv, monitor\nstuff: sky"
NAMES = {"cat", "dog", "tv", "sky"}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("app")
    ckpt = make_checkpoint(folder / "tiny.ckpt")
    command = [
        sys.executable, "-m", "omtseg.cli", "app", "--ckpt", str(ckpt),
        "--captioner", str(make_captioner(folder)), "--port", "0", "--image-size", str(IMAGE_SIZE),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert server.stdout is not None
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "serving on" in line:
                break
        else:
            pytest.fail("omtseg app did not start:\n" + "".join(lines))
        yield line.split("serving on ")[1].split()[0]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}; install Debian's package (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is installed by `make install`")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_FLAGS)
        yield browser
        browser.close()


def test_the_page_segments_an_upload_highlights_and_captions(
    app_url: str, browser: Any, tmp_path: Path
) -> None:
    (image,) = make_images(tmp_path / "upload", count=1)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app_url)
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#preset option").count() == 4  # "(type your own)" + COCO, ADE20K-150, ADE20K-847

    page.set_input_files("#image-input", str(image))
    page.fill("#classes", CLASSES)
    page.click("#segment-button")
    page.wait_for_selector("#segments tbody tr", timeout=60_000)
    assert page.evaluate("document.getElementById('overlay').naturalWidth") >= 512  # enlarged 64 px image
    assert page.locator("#figure").is_visible()
    categories = page.locator("#segments tbody td.category").all_inner_texts()
    assert categories and set(categories) <= NAMES
    assert not page.locator("#error").is_visible()

    # Hover: the segment under the pointer gets its table row marked (a pixel of the largest segment).
    width, height, x, y, segment_id = page.evaluate(
        """(() => {
            const big = state.result.segments.reduce((a, b) => (b.area > a.area ? b : a));
            const i = state.ids.indexOf(big.id, Math.floor(state.ids.length / 3));
            const at = i >= 0 ? i : state.ids.indexOf(big.id);
            const w = state.result.width;
            return [w, state.result.height, at % w, Math.floor(at / w), big.id];
        })()"""
    )
    box = page.locator("#overlay").bounding_box()
    scale_x, scale_y = box["width"] / width, box["height"] / height
    page.mouse.move(box["x"] + (x + 0.5) * scale_x, box["y"] + (y + 0.5) * scale_y)
    page.wait_for_selector(f"#segments tbody tr.active[data-id='{segment_id}']")
    # Click: a caption of the segment under the point.
    page.mouse.down()
    page.mouse.up()
    page.wait_for_function(
        "(() => { const c = document.getElementById('caption');"
        " return c.offsetParent !== null && c.textContent && c.textContent !== 'Captioning…'; })()",
        timeout=60_000,
    )
    caption = page.inner_text("#caption").split()
    assert caption and set(caption) <= set(CAPTION_WORDS)
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

    # A file that is not an image: a clear error in the page, no crash.
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    page.set_input_files("#image-input", str(bad))
    page.click("#segment-button")
    page.wait_for_selector("#error", state="visible")
    assert "not an image" in page.inner_text("#error")
    page.fill("#classes", "  ")
    page.set_input_files("#image-input", str(image))
    page.click("#segment-button")
    page.wait_for_function("document.getElementById('error').textContent.includes('at least one class')")
    page.close()


def test_the_api_answers_bad_requests_with_a_message(app_url: str) -> None:
    body = json.dumps({"image": "data:,", "classes": "cat"}).encode()
    request = urllib.request.Request(app_url + "api/segment", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 400
    assert "upload" in json.loads(error.value.read())["error"]


def test_class_box_and_presets() -> None:
    assert parse_classes("cat\ntv, monitor\n\nstuff: sky\n") == ["cat", "tv, monitor", "stuff: sky"]
    assert parse_classes(" cat, dog ,stuff: sky ") == ["cat", "dog", "stuff: sky"]
    with pytest.raises(ValueError, match="at least one class"):
        parse_classes("\n # nothing\n")
    sets = presets()
    assert [len(sets[k]) for k in ("COCO", "ADE20K-150", "ADE20K-847")] == [133, 150, 847]
    assert "tv, monitor" in ", ".join(sets["COCO"]) and any(e.startswith("stuff: ") for e in sets["COCO"])
    with pytest.raises(ValueError, match="not an image"):
        decode_image("data:image/png;base64,aGVsbG8=")
