"""Image reading with errors a person can act on (torch-free; used by training and the line side).

    >>> img = read_image("data/good/0001.png")   # HxWx3 float32 RGB in [0, 1]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inspection.core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 8192 * 8192  # larger images (a decompression bomb: a small file that decodes to gigabytes) are refused
                          # from their header, before decoding: 64 MP covers the largest line-scan frames in use
HEADER_BYTES = 1 << 18    # what header_size needs at most (a JPEG's size follows its EXIF block, up to 64 KB)


class ImageError(UserError, ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def _to_float(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.int16):  # PIL opens 16-bit PNG/TIFF as I;16 or I
        peak = 65535.0 if arr.max(initial=0) > 255 or arr.dtype == np.uint16 else 255.0
        return np.clip(arr.astype(np.float32) / peak, 0.0, 1.0)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if arr.dtype in (np.float32, np.float64):
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise ImageError(f"{path}: unsupported pixel type {arr.dtype}")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, JPEG, BMP or TIFF header without decoding; None for other data."""
    import struct

    b = bytes(data[:HEADER_BYTES])
    if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
        return struct.unpack(">II", b[16:24])
    if b[:2] == b"BM" and len(b) >= 26:
        w, h = struct.unpack("<ii", b[18:26])
        return abs(w), abs(h)
    if b[:2] == b"\xff\xd8":  # JPEG: the first start-of-frame marker holds the size
        i = 2
        while i + 9 < len(b):
            if b[i] != 0xFF:
                i += 1
                continue
            marker = b[i + 1]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", b[i + 5:i + 9])
                return w, h
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 2 if marker != 0xFF else 1
                continue
            i += 2 + struct.unpack(">H", b[i + 2:i + 4])[0]
        return None
    if b[:4] in (b"II*\x00", b"MM\x00*") and len(b) >= 8:  # TIFF: ImageWidth/ImageLength of the first IFD
        e = "<" if b[:2] == b"II" else ">"
        off = struct.unpack(e + "I", b[4:8])[0]
        if off + 2 > len(b):
            return None
        size = {}
        for k in range(struct.unpack(e + "H", b[off:off + 2])[0]):
            entry = b[off + 2 + 12 * k: off + 14 + 12 * k]
            if len(entry) < 12:
                break
            tag, typ = struct.unpack(e + "HH", entry[:4])
            if tag in (256, 257):
                size[tag] = struct.unpack(e + ("H" if typ == 3 else "I"), entry[8:10] if typ == 3 else entry[8:12])[0]
        return (size[256], size[257]) if len(size) == 2 else None
    return None


def check_pixels(data: bytes, path: Path | str = "<bytes>", limit: int = MAX_PIXELS) -> None:
    """ImageError when the image's header declares more than `limit` pixels (checked before any decoding)."""
    size = header_size(data)
    if size is not None and size[0] * size[1] > limit:
        raise ImageError(f"{path}: image is {size[0]}x{size[1]} px, more than the {limit} pixels this software "
                         "decodes (a decompression bomb, or a camera setting far off)")


def decode_image(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to HxWx3 float32 RGB in [0, 1]; gray is replicated, alpha dropped."""
    import io

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    check_pixels(data, path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # raises on truncated files (LOAD_TRUNCATED_IMAGES stays False)
            if im.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
                im = im.convert("RGB" if im.mode != "LA" else "L")
            arr = np.asarray(im)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (expected PNG, JPEG, BMP or TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"{path}: expected a gray or RGB image, got array of shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ImageError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} px, expected at least 8x8")
    return _to_float(arr, path)


def read_image(path: Path | str) -> np.ndarray:
    """Read an image file to HxWx3 float32 RGB in [0, 1]; 8/16-bit, gray or color."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{path}: file is empty")
    return decode_image(data, path)


def read_mask(path: Path | str) -> np.ndarray:
    """Read a defect mask to an HxW bool array (any non-zero pixel is defect)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except FileNotFoundError:
        raise ImageError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise ImageError(f"{path}: corrupt or unreadable mask ({exc})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    return arr > 0


def read_map(path: Path | str) -> np.ndarray:
    """Read an attention map image (8/16-bit gray PNG, or .npy) to HxW float32 in [0, 1]."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path)
        except (OSError, ValueError) as exc:
            raise ImageError(f"{path}: unreadable attention map ({exc})") from None
        if arr.ndim != 2:
            raise ImageError(f"{path}: attention map must be 2-D, got shape {arr.shape}")
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    return read_image(path)[..., 0]


def read_truth(mask: Path | str | None, corrected: Path | str | None, hw: tuple[int, int]) -> np.ndarray | None:
    """Where a defect image's defect is, HxW bool: its mask; else its corrected attention map (a reviewer's
    brush, >= 0.5, resized to the image), the only pixel truth a factory usually has; else None."""
    if mask:
        return read_mask(mask)
    if corrected:
        import cv2

        m = cv2.resize(read_map(corrected), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR) >= 0.5
        return m if m.any() else None
    return None
