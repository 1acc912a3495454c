"""Frame sources for the line runner: simulated camera, image folder (one-shot or watched), video, camera
(OpenCV), and GenICam cameras (genicam.py).

    >>> src = open_source(cfg.source)       # SourceConfig
    >>> src.open(); frame = src.read()       # Frame, or None at the end; raises Disconnected for a lost camera

A frame that cannot be decoded still comes out, with `error` set, so that the part is reported (never passed
silently) and counted. Only numpy and OpenCV.
"""
from __future__ import annotations

import time
from itertools import count
from pathlib import Path

import cv2
import numpy as np

from inspection.core.imageio import IMAGE_SUFFIXES
from inspection.core.layout import find_images
from inspection.deploy.line.frames import Disconnected, Frame, SourceError
from inspection.deploy.line.genicam import GenICamSource
from inspection.deploy.runtime import FrameError, read_frame


def _images(folder: Path, dataset: bool = False) -> list[Path]:
    """Image files under folder, in name order; dataset=True: a dataset folder's parts only (good/ and
    defect/<type>/, read by the layout's own reader; no masks or corrected maps), when it has that layout."""
    if dataset and (folder / "good").is_dir():
        return sorted(f.path for f in find_images(folder, complete=False)[0])
    skip = ("masks", "corrected") if dataset else ()
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith(".") and "/." not in p.as_posix()
                  and p.relative_to(folder).parts[0] not in skip)


def _from_file(path: Path, part_id: str) -> Frame:
    try:
        return Frame(part_id, read_frame(path), time.time(), str(path))
    except FrameError as exc:
        return Frame(part_id, None, time.time(), str(path), str(exc))


class FolderSource:
    """Images of a folder in name order, once; with watch=True, new files as they arrive (never ends)."""

    def __init__(self, path: str, watch: bool = False, settle_ms: int = 200, use_names: bool = True):
        self.folder, self.watch, self.settle = Path(path), watch, settle_ms / 1000
        self.use_names, self.counter = use_names, count(1)
        self.seen: set[str] = set()
        self.pending: list[Path] = []
        self.sizes: dict[str, tuple[int, float]] = {}

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: image folder not found")
        if not self.watch:
            self.pending = _images(self.folder)
            if not self.pending:
                raise SourceError(f"{self.folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")

    def _settled(self) -> list[Path]:
        """New files whose size has stayed the same for `settle` seconds (a writer may still be copying)."""
        now, ready = time.time(), []
        for p in _images(self.folder):
            key = str(p)
            if key in self.seen:
                continue
            try:
                size = p.stat().st_size
            except OSError:
                continue
            last = self.sizes.get(key)
            if last is None or last[0] != size:
                self.sizes[key] = (size, now)
            elif now - last[1] >= self.settle:
                ready.append(p)
        return ready

    def read(self, stop=lambda: False) -> Frame | None:
        while self.watch and not self.pending and not stop():
            self.pending = self._settled()
            if not self.pending:
                time.sleep(min(0.05, self.settle or 0.05))
        if not self.pending:
            return None
        path = self.pending.pop(0)
        self.seen.add(str(path))
        self.sizes.pop(str(path), None)
        return _from_file(path, path.stem if self.use_names else f"{next(self.counter):08d}")

    def close(self) -> None:
        pass


class SimulatedCamera:
    """Replays the images of a dataset folder at `fps` (0 = as fast as taken), decoded once and kept in memory.

    Paced, a frame is stamped with the time the camera takes it (every 1/fps from the first read), not the time
    the capture thread gets to hand it over: a reader that falls behind finds the frames it missed waiting, and
    their latency counts from when they were taken, as with a camera's buffers."""

    def __init__(self, path: str, fps: float = 0.0, loop: bool = False, use_names: bool = False):
        self.folder, self.fps, self.loop, self.use_names = Path(path), fps, loop, use_names
        self.frames: list[tuple[Path, np.ndarray | None, str | None]] = []
        self.i, self.counter, self.next_t = 0, count(1), None

    def open(self) -> None:
        if not self.frames:
            if not self.folder.is_dir():
                raise SourceError(f"{self.folder}: dataset folder for the simulated camera not found")
            for p in _images(self.folder, dataset=True):
                try:
                    self.frames.append((p, read_frame(p), None))
                except FrameError as exc:
                    self.frames.append((p, None, str(exc)))
            if not self.frames:
                raise SourceError(f"{self.folder}: no images to replay")
        self.next_t = None  # the first read takes the first frame

    def read(self, stop=lambda: False) -> Frame | None:
        if self.i >= len(self.frames):
            if not self.loop:
                return None
            self.i = 0
        taken = time.time()
        if self.fps > 0:
            self.next_t = taken if self.next_t is None else self.next_t + 1 / self.fps
            if self.next_t > taken:
                time.sleep(self.next_t - taken)
            taken = self.next_t
        path, image, error = self.frames[self.i]
        self.i += 1
        n = next(self.counter)
        part = path.stem if self.use_names and not self.loop else f"sim-{n:08d}"
        return Frame(part, image, taken, str(path), error)

    def close(self) -> None:
        pass


class VideoSource:
    """OpenCV VideoCapture: a video file, a camera index, an RTSP/HTTP URL or a GStreamer pipeline."""

    def __init__(self, path: str, camera: bool, loop: bool = False):
        self.path, self.camera, self.loop = path, camera, loop
        self.cap = None
        self.counter = count(1)

    def _target(self):
        return int(self.path) if self.path.isdigit() else self.path

    def open(self) -> None:
        target = self._target()
        if not self.camera and not Path(self.path).is_file():
            raise SourceError(f"{self.path}: video file not found")
        cap = cv2.VideoCapture(target, cv2.CAP_GSTREAMER) if str(target).endswith("appsink") else \
            cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: cannot open the {'camera' if self.camera else 'video'} "
                              "(device busy or absent, wrong URL, or no codec)")
        self.cap = cap

    def read(self, stop=lambda: False) -> Frame | None:
        ok, image = self.cap.read() if self.cap is not None else (False, None)
        if not ok:
            if self.camera:
                self.close()
                raise Disconnected(f"{self.path}: camera stopped delivering frames")
            if self.loop:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self.cap.read()
            if not ok:
                return None
        return Frame(f"{next(self.counter):08d}", image, time.time(), self.path)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def open_source(cfg, metrics=None, log=None):
    """The source a SourceConfig describes (not yet opened); a camera's counters go to `metrics`."""
    names = cfg.part_id == "auto"
    if cfg.kind == "genicam":
        return GenICamSource(cfg, metrics, log)
    if cfg.kind == "simulated":
        return SimulatedCamera(cfg.path, cfg.fps, cfg.loop, names)
    if cfg.kind in ("folder", "watch"):
        return FolderSource(cfg.path, cfg.kind == "watch", cfg.settle_ms, names)
    return VideoSource(cfg.path, cfg.kind == "camera", cfg.loop)
