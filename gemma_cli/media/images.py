"""Reading images for the model.

Images go through Pillow (PNG, JPEG, WebP, GIF, BMP, TIFF, ...): first frame, EXIF
orientation applied, alpha flattened onto white, every mode made 8-bit RGB. Whatever is wrong with a
file becomes one MediaError naming it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_cli.errors import MediaError
from gemma_cli.media.files import display_name, read_bytes

if TYPE_CHECKING:

    from gemma_cli.engine.projector import Media



IMAGE_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"


MAX_PIXELS = 64_000_000  # more is a decompression bomb or a scan far beyond any token budget


def load_image(source: str | Path, data: bytes | None = None) -> "Media":
    """An image file (or `-`, or `data` already read) as upright 8-bit RGB."""
    # lazy: Pillow, only when an image is read; keeps gemma --help fast
    from PIL import Image, UnidentifiedImageError

    # lazy: the engine (llama_cpp, numpy), only when a model runs; keeps gemma --help fast
    from gemma_cli.engine.projector import Media

    name = display_name(source)
    data = read_bytes(source, "image") if data is None else data
    if not data:
        raise MediaError(f"{name} is empty (0 bytes)", "pass a non-empty image file")
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice it; a bomb is an error at any size past ours.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            _check_size(image, name)
            image.seek(0)  # animations and multi-page files: the first frame
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise MediaError(f"{name} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS} pixels)",
                             "a decompression bomb? scale the image down first") from None
        except UnidentifiedImageError:
            raise MediaError(f"{name} is not an image gemma can read", f"use {IMAGE_FORMATS}") from None
        except MediaError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise MediaError(f"{name} is truncated or damaged ({_short(e)})", "export or download the image again") from None
    rgb = _rgb(_upright(image))
    return Media.image(rgb.tobytes(), rgb.width, rgb.height, name)


def _check_size(image, name: str) -> None:
    w, h = image.size
    if w <= 0 or h <= 0:
        raise MediaError(f"{name} has no pixels ({w}x{h})", "pass a real image")
    if w * h > MAX_PIXELS:
        raise MediaError(f"{name} is too large to decode safely ({w}x{h} pixels)",
                         "a decompression bomb? scale the image down first")


def _short(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:120]


def _upright(image):
    """Apply the EXIF orientation (phone photos are stored sideways with a rotate flag)."""
    # lazy: Pillow, only when an image is read; keeps gemma --help fast
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        return image


def _rgb(image):
    """Any Pillow mode as 8-bit RGB; transparency flattened onto white."""
    # lazy: Pillow, only when an image is read; keeps gemma --help fast
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode.startswith("I") or mode == "F":
        image = _eight_bit(image)
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _eight_bit(image):
    """16/32-bit integer and float images scaled to 8 bits (a plain convert would clip them)."""
    # lazy: numpy, only when audio or frames are decoded; Pillow, only when an image is read; keeps gemma --help fast
    import numpy as np
    from PIL import Image

    a = np.asarray(image, dtype=np.float64)
    lo, hi = (0.0, 65535.0) if image.mode.startswith("I;16") else (float(a.min()), float(a.max()))
    if image.mode == "I" and lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    scaled = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L")
