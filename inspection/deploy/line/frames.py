"""What a source delivers: a Frame, and the two ways a source fails (shared by every source, GenICam too).

A Frame carries what the part is judged as from capture to verdict to record: the product prepared when it was
taken and that product's station ROI (stamped by the capture thread), the model version that judged it and
the region the model saw (set by the runner). Nothing downstream reads them back from the station config.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    product: str = ""             # the product prepared when it was taken ("": a station without products)
    roi: list | None = None       # that product's station ROI [x, y, w, h] in image pixels (None: the whole image)
    model_version: str = ""       # the model that judged it (the runner sets it)
    judged: np.ndarray | None = field(default=None, repr=False)  # the ROI's part of image, as the model saw it
