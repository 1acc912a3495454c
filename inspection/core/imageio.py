"""Image reading with errors a person can act on (torch-free; used by training and the line side).

    >>> img = read_image("data/good/0001.png")   # HxWx3 float32 RGB in [0, 1] (Pillow: training)
    >>> frame = read_frame("log/2026-12-01/line-1/part-0042-....png")   # as OpenCV decodes it (line, review)

Every image this software reads from a file or a request goes through check_pixels first: its size from its own
headers (PNG, JPEG, BMP, TIFF, WebP, wherever in the file they are), refused above MAX_PIXELS, and any other
format refused, all before a decoder allocates anything.
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from inspection.core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 8192 * 8192  # larger images (a decompression bomb: a small file that decodes to gigabytes) are refused
                          # from their header, before decoding: 64 MP covers the largest line-scan frames in use
MAX_FILE_BYTES = 8 * MAX_PIXELS  # an image file larger than 64 MP of 4 channels at 16 bit is not read at all
ACCEPTED = "PNG, JPEG, BMP, TIFF or WebP"
REFUSED = "JPEG 2000, OpenEXR, Radiance HDR, PNM/PAM/PFM, Sun raster, GIF, AVIF and animated PNG or WebP"


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


# -- the size of an image, as its decoder reads it ------------------------------------------------------------
# One parser per accepted format, each following its decoder (libpng, libjpeg-turbo, OpenCV's BMP reader, libtiff,
# libwebp) through the whole file: a size field after megabytes of metadata is still found. A format OpenCV
# would also decode but that no station writes is refused, so nothing reaches a decoder unsized.
def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, JPEG, BMP, TIFF or WebP image, read from its headers without decoding, wherever
    in the data they are; ImageError for any other data or when the size cannot be read."""
    b = bytes(data)
    for magic, parse in _FORMATS:
        if any(b.startswith(m) for m in magic):
            kind = parse.__name__[1:].upper()
            try:
                size = parse(b)
            except (struct.error, IndexError, ValueError) as exc:
                raise ImageError(f"not a readable image (its {kind} header cannot be read: {exc})") from None
            if size is None or min(size) < 1:
                raise ImageError(f"not a readable image (its {kind} header gives no image size)")
            return size
    raise ImageError(f"not a readable image of an accepted format (expected {ACCEPTED}; {REFUSED} are refused)")


def _png(b: bytes) -> tuple[int, int] | None:
    """IHDR must come first (libpng); an animation control chunk before the image data is refused."""
    if b[12:16] != b"IHDR":
        return None
    size = struct.unpack(">II", b[16:24])
    i = 8
    for _ in range(MAX_SEGMENTS):
        if i + 8 > len(b):
            break
        length, kind = struct.unpack(">I4s", b[i:i + 8])
        if kind == b"acTL":
            raise ValueError("an animated PNG")
        if kind in (b"IDAT", b"IEND"):
            return size
        i += 12 + length
    else:
        raise ValueError(f"more than {MAX_SEGMENTS} chunks before the image data")
    return size


_JPEG_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA)  # the frame types libjpeg-turbo decodes
# segments or chunks walked before the size, at most: real files have a few dozen; a file of millions of tiny
# ones would keep this Python loop busy for minutes per request
MAX_SEGMENTS = 10_000
_NOT_FF = re.compile(rb"[^\xff]")


def _jpeg(b: bytes) -> tuple[int, int] | None:
    """The first frame header (SOF), found as libjpeg finds markers: skipping segments by their length and any
    bytes between them up to the next 0xFF (an APP block of any size before it changes nothing)."""
    i = 2
    for _ in range(MAX_SEGMENTS):
        i = b.find(b"\xff", i)
        if i < 0:
            return None
        fill = _NOT_FF.search(b, i)  # fill bytes 0xFF before the marker's own byte
        if fill is None:
            return None
        i = fill.start()
        marker, i = b[i], i + 1
        if marker == 0:  # a stuffed 0xFF00, not a marker
            continue
        if marker in _JPEG_SOF:
            height, width, parts = struct.unpack(">HHB", b[i + 3:i + 8])
            if parts not in (1, 3, 4):
                raise ValueError(f"{parts} colour components")
            return width, height
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xCC)) or marker in (0xD8, 0xD9, 0xDA):
            raise ValueError(f"marker 0x{marker:02X} before any frame header libjpeg decodes")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        length = struct.unpack(">H", b[i:i + 2])[0]
        if length < 2:
            raise ValueError(f"segment length {length}")
        i += length
    raise ValueError(f"more than {MAX_SEGMENTS} segments before the frame header")


def _bmp(b: bytes) -> tuple[int, int] | None:
    """OpenCV's BMP reader: a 12-byte OS/2 header holds 16-bit sizes, headers of 36 bytes and more 32-bit ones."""
    header = struct.unpack("<I", b[14:18])[0]
    if header == 12:
        return struct.unpack("<HH", b[18:22])
    if header >= 36:
        w, h = struct.unpack("<ii", b[18:26])
        return abs(w), abs(h)
    return None


def _tiff(b: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first IFD (the page OpenCV reads), wherever its offset points; classic
    TIFF and BigTIFF; more than 4 samples per pixel refused."""
    e = "<" if b[:2] == b"II" else ">"
    big = b[2:4] in (b"+\x00", b"\x00+")
    if big:
        if struct.unpack(e + "HH", b[4:8]) != (8, 0):
            return None
        off = struct.unpack(e + "Q", b[8:16])[0]
        count, head, entry, value = struct.unpack(e + "Q", b[off:off + 8])[0], 8, 20, 12
    else:
        off = struct.unpack(e + "I", b[4:8])[0]
        count, head, entry, value = struct.unpack(e + "H", b[off:off + 2])[0], 2, 12, 8
    if count > 0xFFFF:  # libtiff's own sanity limit
        raise ValueError(f"{count} directory entries")
    fields: dict[int, int] = {}
    for k in range(count):
        at = off + head + entry * k
        tag, typ = struct.unpack(e + "HH", b[at:at + 4])
        if tag in (256, 257, 277) and tag not in fields:  # libtiff keeps the first of duplicated tags
            fmt = {3: "H", 4: "I", 16: "Q" if big else None}.get(typ)
            if fmt is None:
                raise ValueError(f"tag {tag} of type {typ}")
            fields[tag] = struct.unpack_from(e + fmt, b, at + value)[0]
    if fields.get(277, 1) > 4:
        raise ValueError(f"{fields[277]} samples per pixel")
    return (fields[256], fields[257]) if 256 in fields and 257 in fields else None


def _webp(b: bytes) -> tuple[int, int] | None:
    """The canvas of an extended WebP (VP8X), else the size in the first VP8 or VP8L bitstream, the larger where
    both are there (libwebp refuses a still image whose frame differs from its canvas); animations refused."""
    if b[8:12] != b"WEBP":
        return None
    sizes, i = [], 12
    for _ in range(MAX_SEGMENTS):
        if i + 8 > len(b) or len(sizes) == 2:
            break
        kind, length = b[i:i + 4], struct.unpack("<I", b[i + 4:i + 8])[0]
        data = b[i + 8:i + 8 + length]
        if kind == b"VP8X":
            if data[0] & 0x02:
                raise ValueError("an animated WebP")
            sizes.append((int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:10], "little") + 1))
        elif kind == b"VP8 ":
            if data[3:6] != b"\x9d\x01\x2a":
                raise ValueError("a VP8 chunk without a key frame")
            w, h = struct.unpack("<HH", data[6:10])
            sizes.append((w & 0x3FFF, h & 0x3FFF))
        elif kind == b"VP8L":
            if data[0] != 0x2F:
                raise ValueError("a VP8L chunk without its signature")
            bits = struct.unpack("<I", data[1:5])[0]
            sizes.append(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        elif kind == b"ANMF":
            raise ValueError("an animated WebP")
        i += 8 + length + (length & 1)
    if not sizes:
        return None
    return max(w for w, _ in sizes), max(h for _, h in sizes)


_FORMATS = (((b"\x89PNG\r\n\x1a\n",), _png), ((b"\xff\xd8\xff",), _jpeg), ((b"BM",), _bmp),
            ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff), ((b"RIFF",), _webp))


def check_pixels(data: bytes, path: Path | str = "<bytes>", limit: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the headers; ImageError when the data is not an accepted image, its size cannot be
    read, or it declares more than `limit` pixels. Every reader of a stored or uploaded image calls this (through
    decode_frame, decode_image, read_frame) before any decoder sees the data."""
    try:
        w, h = header_size(data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    if w * h > limit:
        raise ImageError(f"{path}: image is {w}x{h} px, more than the {limit} pixels this software "
                         "decodes (a decompression bomb, or a camera setting far off)")
    return w, h


def read_file(path: Path | str) -> bytes:
    """An image file's bytes (at most MAX_FILE_BYTES), with errors a person can act on."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{path}: file is {size} bytes, more than an image of {MAX_PIXELS} pixels needs")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{path}: not a readable image (the file is empty)")
    return data


def decode_frame(data: bytes, path: Path | str = "<bytes>", flags: int | None = None) -> np.ndarray:
    """Encoded image bytes → the array OpenCV decodes (default IMREAD_UNCHANGED: BGR(A) or gray, 8/16-bit),
    after check_pixels; ImageError when refused, corrupt or truncated."""
    import cv2

    check_pixels(data, path)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # the ImageError below says it better
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED if flags is None else flags)
    except cv2.error:  # a decoder's own assertion (a damaged header past the one read here)
        image = None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        raise ImageError(f"{path}: not a readable image (corrupt or truncated)")
    return image


def decoded(data: bytes, path: Path | str = "<bytes>", flags: int | None = None) -> np.ndarray | None:
    """decode_frame, with None for data it refuses (callers that say themselves what was unreadable)."""
    try:
        return decode_frame(data, path, flags)
    except ImageError:
        return None


def read_frame(path: Path | str, flags: int | None = None) -> np.ndarray:
    """An image file as a camera would deliver it (OpenCV: BGR or gray, 8/16-bit), checked before decoding."""
    return decode_frame(read_file(path), path, flags)


def decode_image(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to HxWx3 float32 RGB in [0, 1]; gray is replicated, alpha dropped."""
    path = Path(path)
    arr = _pil_array(data, path, "image")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"{path}: expected a gray or RGB image, got array of shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ImageError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} px, expected at least 8x8")
    return _to_float(arr, path)


def _pil_array(data: bytes, path: Path, what: str) -> np.ndarray:
    """Pillow's decoding (training side) of checked bytes: a numpy array; palette, CMYK, YCbCr to RGB."""
    import io

    from PIL import Image, UnidentifiedImageError

    check_pixels(data, path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # raises on truncated files (LOAD_TRUNCATED_IMAGES stays False)
            if what == "image" and im.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
                im = im.convert("RGB" if im.mode != "LA" else "L")
            return np.asarray(im)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable {what} (expected {ACCEPTED})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated {what} ({exc})") from None


def read_image(path: Path | str) -> np.ndarray:
    """Read an image file to HxWx3 float32 RGB in [0, 1]; 8/16-bit, gray or color."""
    return decode_image(read_file(path), path)


def read_mask(path: Path | str) -> np.ndarray:
    """Read a defect mask to an HxW bool array (any non-zero pixel is defect)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: mask file not found")
    arr = _pil_array(read_file(path), path, "mask")
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
