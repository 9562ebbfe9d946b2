"""Images kept once, content-addressed: ``traces/images/<sha256>.png``.

A case can then be shown with the exact pixels the model saw without copying the dataset
into every row; the same image sampled G times per step over many steps is stored once.
The folder is capped (``logging.trace_images_max_mb``); past the cap, rows keep the image's
hash and original path but no copy."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

IMAGES = "images"


class ImageStore:
    def __init__(self, store_dir: Path, max_mb: float):
        self.dir = Path(store_dir) / IMAGES
        self.max_bytes = int(max_mb * (1 << 20))
        self._known: set[str] = set()
        self.used = 0
        if self.dir.is_dir():
            for p in self.dir.glob("*.png"):
                self._known.add(p.stem)
                self.used += p.stat().st_size
        self.skipped = 0  # images not kept because of the cap

    def put(self, sha256: str, png: bytes) -> str:
        """The store-relative path of the image (written if new), or "" when the cap leaves no room."""
        rel = f"{IMAGES}/{sha256}.png"
        if sha256 in self._known:
            return rel
        if self.used + len(png) > self.max_bytes:
            self.skipped += 1
            return ""
        if hashlib.sha256(png).hexdigest() != sha256:
            raise ValueError(f"image bytes do not hash to their row's image_sha256 {sha256}")
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{sha256}.tmp"
        tmp.write_bytes(png)
        os.replace(tmp, self.dir / f"{sha256}.png")
        self._known.add(sha256)
        self.used += len(png)
        return rel
