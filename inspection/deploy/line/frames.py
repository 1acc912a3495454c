"""What a source delivers: a Frame, and the two ways a source fails (shared by every source, GenICam too)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inspection.core.errors import UserError


class SourceError(UserError, RuntimeError):
    """A source that cannot be opened; the message names it and says why."""


class Disconnected(RuntimeError):
    """The camera stopped delivering frames; the runner reconnects with back-off."""


@dataclass
class Frame:
    part_id: str
    image: np.ndarray | None      # as the source delivers it (BGR or gray for OpenCV sources); None if unreadable
    ts: float                     # capture time (time.time())
    ref: str = ""                 # file the frame came from, if any
    error: str | None = None
    camera: dict | None = None    # GenICam: {"frame_id", "timestamp_ns"} as the camera stamped the frame
