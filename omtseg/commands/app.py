"""``omtseg app``: a local web page to segment an uploaded image with typed classes (and caption regions).

    omtseg app --ckpt model.ckpt [--captioner captioner.ckpt] [--port 7860]

Open the printed address in a browser: upload an image, type classes (one per line, ``tv, monitor`` for
synonyms, ``stuff: sky`` for stuff; a single line is read as comma-separated classes) or pick a preset
(COCO, ADE20K-150, ADE20K-847), and the page shows the overlay and a table of segments; hovering either
highlights the segment in both. With a captioner, a click on the image captions the segment under it and a
dragged box captions that region. The page is ``omtseg/assets/app/index.html``; the server is the standard
library's, so the app needs nothing beyond omtseg itself (Gradio, the field's usual demo toolkit, does not
install beside our pillow pin).

HTTP interface (JSON in and out; errors are ``{"error": message}`` with status 400, shown in the page):

    GET  /                 the page
    GET  /api/info         {"captioner": bool, "presets": {name: [class entries]}}
    POST /api/segment      {"image": data URL, "classes": text} -> {"image_id", "width", "height",
                           "overlay": PNG data URL, "ids": PNG data URL (ids as R + 256 G + 256^2 B),
                           "segments": [Segmenter's segments, each with its class "color"]}
    POST /api/caption      {"image_id", "classes", "point": [x, y] | "box": [x0, y0, x1, y1]} -> {"caption"}
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from omtseg.api import Segmenter
from omtseg.data.vocabulary import class_entries, read_categories_json, read_vocabulary_tsv
from omtseg.io import id2rgb

ASSETS = Path(str(resources.files("omtseg") / "assets"))
PAGE = ASSETS / "app" / "index.html"
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
"""Largest request body accepted (a data URL is 4/3 of the image file)."""
KEPT_IMAGES = 16
"""Uploaded images kept for captioning requests, most recent first."""


@cache
def presets() -> dict[str, list[str]]:
    """The packaged vocabularies as class entries: COCO panoptic (133), ADE20K-150, ADE20K-847."""
    vocabularies = ASSETS / "vocabularies"
    return {
        "COCO": class_entries(read_categories_json(ASSETS / "coco_sample" / "panoptic_coco_categories.json")),
        "ADE20K-150": class_entries(read_vocabulary_tsv(vocabularies / "ade20k_150.txt")),
        "ADE20K-847": class_entries(read_vocabulary_tsv(vocabularies / "ade20k_847.txt")),
    }


def parse_classes(text: str) -> list[str]:
    """The page's class box: one class per line; a single line is read as comma-separated classes.

    Raises:
        ValueError: no class given.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) == 1:
        lines = [part.strip() for part in lines[0].split(",") if part.strip()]
    if not lines:
        raise ValueError("Type at least one class (one per line, or comma-separated on one line).")
    return lines


def decode_image(data_url: Any) -> np.ndarray:
    """An uploaded ``data:image/...;base64,...`` URL as (H, W, 3) uint8.

    Raises:
        ValueError: no image, not base64, or not a readable image (the message says which).
    """
    if not isinstance(data_url, str) or not data_url:
        raise ValueError("Choose an image file to upload first.")
    _, _, payload = data_url.partition(",")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("The upload is not a base64 data URL; reload the page and upload again.") from None
    if not raw:
        raise ValueError("The uploaded file is empty.")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return np.asarray(image.convert("RGB")).copy()
    except UnidentifiedImageError:
        raise ValueError("The uploaded file is not an image (use a JPEG, PNG, WebP, BMP or GIF).") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"The uploaded image is corrupt or truncated ({e}).") from None


def png_data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class SegmentApp:
    """What the page asks for, one model call at a time (the segmenter keeps hooks and caches).

    Args:
        segmenter: the model to serve.
        overlay_min_side: overlays of smaller images are enlarged to this short side so names stay readable.
    """

    def __init__(self, segmenter: Segmenter, *, overlay_min_side: int = 512) -> None:
        self.segmenter = segmenter
        self.overlay_min_side = overlay_min_side
        self._lock = threading.Lock()
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()

    def info(self) -> dict[str, Any]:
        return {"captioner": self.segmenter.captioner is not None, "presets": presets()}

    def segment(self, request: dict[str, Any]) -> dict[str, Any]:
        image = decode_image(request.get("image"))
        classes = parse_classes(str(request.get("classes", "")))
        with self._lock:
            result = self.segmenter(image, classes=classes, names=["upload.png"])
        assert not isinstance(result, list)
        image_id = uuid.uuid4().hex
        self._images[image_id] = image
        while len(self._images) > KEPT_IMAGES:
            self._images.popitem(last=False)
        h, w = image.shape[:2]
        assert result.raw.panoptic is not None
        segments = result.segments
        for entry, seg in zip(segments, result.raw.panoptic.segments, strict=True):
            entry["color"] = "#{:02x}{:02x}{:02x}".format(*result.vocabulary.colors[seg.label])
        return {
            "image_id": image_id,
            "width": w,
            "height": h,
            "overlay": png_data_url(np.asarray(result.overlay(min_side=self.overlay_min_side))),
            "ids": png_data_url(id2rgb(result.panoptic)),
            "segments": segments,
        }

    def caption(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.segmenter.captioner is None:
            raise ValueError("This app runs without a captioner; start it with --captioner CKPT to caption.")
        image = self._images.get(str(request.get("image_id")))
        if image is None:
            raise ValueError("That image is no longer held by the app; upload and segment it again.")
        classes = parse_classes(str(request.get("classes", "")))
        prompt: dict[str, Any]
        if "point" in request:
            prompt = {"points": [[float(v) for v in request["point"]]]}
        elif "box" in request:
            prompt = {"boxes": [[float(v) for v in request["box"]]]}
        else:
            raise ValueError("Click a point or drag a box on the image to caption it.")
        with self._lock:
            (text,) = self.segmenter.caption(image, classes, **prompt).captions
        return {"caption": text}


def make_server(app: SegmentApp, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """An HTTP server for ``app`` (``port`` 0 picks a free one: see ``server.server_address``)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass  # the terminal shows the address and errors, not every request

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path in ("/", "/index.html"):
                self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif self.path == "/api/info":
                self._json(200, app.info())
            else:
                self._json(404, {"error": f"No page at {self.path}."})

        def do_POST(self) -> None:  # noqa: N802
            routes = {"/api/segment": app.segment, "/api/caption": app.caption}
            if self.path not in routes:
                self._json(404, {"error": f"No endpoint at {self.path}."})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD_BYTES:
                self._json(400, {"error": f"The upload is larger than {MAX_UPLOAD_BYTES >> 20} MB."})
                return
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("The request must be a JSON object.")
                self._json(200, routes[self.path](request))
            except json.JSONDecodeError:
                self._json(400, {"error": "The request is not valid JSON."})
            except ValueError as e:  # the user's input: shown in the page
                self._json(400, {"error": str(e)})

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg app``): serve until interrupted."""
    parser = argparse.ArgumentParser(prog="omtseg app", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="segmenter checkpoint written by `omtseg fit`")
    parser.add_argument("--captioner", default=None, help="captioner checkpoint: click or drag to caption")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument(
        "--image-size", type=int, default=None,
        help="long side images are resized to, pixels (default: the training data config's eval_size, "
        "as the checkpoint records it; 640 when it does not)",
    )
    args = parser.parse_args(argv)
    size = {} if args.image_size is None else {"image_size": args.image_size}
    segmenter = Segmenter.from_checkpoint(args.ckpt, device=args.device, captioner=args.captioner, **size)
    server = make_server(SegmentApp(segmenter), args.host, args.port)
    port = server.server_address[1]
    print(f"omtseg app: serving on http://{args.host}:{port}/ (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
