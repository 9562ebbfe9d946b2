"""The project's one image codec: PNG bytes in the data, PIL images for the processors.

Everything that turns an image into bytes or bytes into an image goes through here,
so the prepared datasets (whose hashes depend on the exact PNG bytes), the rollout
engine and the learner all see the same pixels. Lives in
``learner`` (no Ray, no vLLM) so actors and pipelines can import it too.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Optional

from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# No image is decoded past this many pixels, whatever the caller asks (a 9459 x 9459 RGB image is
# 256 MiB decoded). Checked on the header's size, before any pixel is decompressed, so a
# decompression bomb (a few KB of PNG claiming 100k x 100k pixels) costs nothing.
MAX_DECODE_PIXELS = 89_478_485  # PIL's own warning threshold
MAX_IMAGE_FILE_BYTES = 256 << 20  # an image file is not read into memory past this
_KEPT_MODES = ("L", "RGB", "RGBA", "LA")  # modes to_png keeps; anything else becomes RGB


def is_png(data: bytes) -> bool:
    return data.startswith(PNG_MAGIC)


def encode_png(image: Image.Image) -> bytes:
    """PIL image -> PNG bytes, with PIL's default PNG options (the bytes every dataset hash is built on)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_image(image: Any, max_pixels: Optional[int] = None) -> Image.Image:
    """PNG/JPEG bytes or a PIL image -> RGB PIL image; raises ValueError with the reason.

    With ``max_pixels``, an image of more than 64x that many pixels is refused (the
    processor resizes to max_pixels anyway; absurd inputs should not cost memory first)."""
    cap = min(64 * max_pixels, MAX_DECODE_PIXELS) if max_pixels else MAX_DECODE_PIXELS
    try:
        img = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image))  # reads the header only
        check_size(img.size, cap, f"64x max_pixels={max_pixels}" if max_pixels else "")
        img = img.convert("RGB")
    except ValueError:
        raise
    except Exception as e:  # PIL raises many types; the caller only needs the reason
        reason = "not a recognised image format" if type(e).__name__ == "UnidentifiedImageError" else str(e)
        raise ValueError(f"image cannot be decoded ({type(e).__name__}: {reason})") from None
    return img


def check_size(size: tuple[int, int], cap: int = MAX_DECODE_PIXELS, why: str = "") -> None:
    """Refuse an empty image, or one of more than ``cap`` pixels, from its (header) size: before decoding it."""
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image has an empty size {size}")
    if width * height > cap:
        raise ValueError(f"image {width}x{height} has {width * height:,} pixels, over the limit of {cap:,}"
                         f" ({why or 'MAX_DECODE_PIXELS'}); refused before decoding")


def to_png(data: bytes) -> bytes:
    """PNG bytes of encoded image bytes: PNG input is returned as is (after checking it
    decodes); other formats are converted (modes other than L, RGB, RGBA, LA to RGB).
    More than MAX_DECODE_PIXELS: ValueError, before decoding. PIL's errors (UnidentifiedImageError, OSError, ValueError, SyntaxError) propagate."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's own header check, past 2x its pixel limit
        raise ValueError(f"{e}; refused before decoding") from None
    with im:
        check_size(im.size)  # ValueError before a byte is decompressed
        im.load()
        if is_png(data):
            return data
        if im.mode not in _KEPT_MODES:
            im = im.convert("RGB")
        return encode_png(im)


def read_image_bytes(image: bytes | str | os.PathLike) -> bytes:
    """The encoded bytes of an image given as bytes (returned as they are, even empty) or
    a path (read from disk). ValueError 'image file not found: ...' for a path that is not
    a file, 'image missing' for anything else; OSError if the file cannot be read."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)) and os.fspath(image):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image file not found: {image}")
        if path.stat().st_size > MAX_IMAGE_FILE_BYTES:
            raise ValueError(f"image file {image} is {path.stat().st_size / 2**20:.0f} MiB, over the limit of "
                             f"{MAX_IMAGE_FILE_BYTES >> 20} MiB")
        return path.read_bytes()
    raise ValueError("image missing")
