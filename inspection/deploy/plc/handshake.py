"""The trigger/result handshake with the line's PLC, independent of the protocol (OPC UA, Modbus TCP).

    Ready ─Trigger(part)─▶ Busy ─result─▶ ResultReady ─Ack─▶ Ready
      │                     └─ no frame or result within result_timeout_ms: ResultReady with error NO_FRAME
      │                                      └─ no Ack within ack_timeout_ms: Ready, error ACK_TIMEOUT
      └─PrepareProduct(id)─▶ Preparing ─model loaded, camera set─▶ Ready (the next trigger is judged as id)

One part at a time: a trigger while Busy, ResultReady or Preparing is refused with BUSY (counted, never merged
with the part in progress); a prepare while Busy or ResultReady with PREPARE_BUSY, so a product changes between
two parts, never inside one. The runner's capture thread takes one frame per accepted trigger (`take`), its
inference loop hands the verdict back (`complete`); the protocol servers read `snapshot()` and call
`trigger`/`ack`/`prepare`/`unprepare`; the station's products (`products`, line/products.py) load and switch.
Codes are documented for integrators in docs/plc.md. torch-free, stdlib only.
"""
from __future__ import annotations

import collections
import re
import threading
import time
from dataclasses import asdict, dataclass, field

from inspection.core.errors import UserError

READY, BUSY, RESULT_READY, PREPARING = "Ready", "Busy", "ResultReady", "Preparing"
STATE_CODES = {READY: 1, BUSY: 2, RESULT_READY: 3, PREPARING: 4}

# error codes (result errors and refused commands share one table; their meanings: docs/plc.md)
OK, BUSY_ERROR, NO_FRAME, FRAME_ERROR, ACK_TIMEOUT, NOTHING_TO_ACK, BAD_PART_ID = range(7)
PREPARE_BUSY, UNKNOWN_PRODUCT, PREPARE_FAILED, NO_PRODUCT = range(7, 11)
# what a PLC reads about the product (Modbus ProductState)
PRODUCT_NONE, PRODUCT_PREPARING, PRODUCT_READY, PRODUCT_ERROR = range(4)
VERDICT_CODES = {"pass": 1, "fail": 2, "review": 3, "error": 4}  # OK, NG, REVIEW, ERROR
VERDICT_NAMES = {0: "", 1: "OK", 2: "NG", 3: "REVIEW", 4: "ERROR"}
NO_CLASS = -1
_PART_ID = re.compile(r"[\x21-\x7e]{1,64}")


class PLCError(UserError, RuntimeError):
    """A PLC server that cannot start; the message names the config field."""


@dataclass
class PLCResult:
    """What the PLC reads for one part."""

    part_id: str = ""
    sequence: int = 0                # results given so far (the PLC sees a new result by this changing)
    verdict: int = 0                 # VERDICT_CODES; 0 before the first part
    class_code: int = NO_CLASS       # index in the package's classes (0 = good); -1 when not judged
    defect_type: str = ""
    score: float = 0.0               # defect score in [0, 1]
    boxes: int = 0
    largest_box: list = field(default_factory=lambda: [0, 0, 0, 0])  # x, y, w, h in frame pixels
    model_version: str = ""
    product: str = ""                # the product prepared when the part was triggered
    product_number: int = 0          # its Modbus number (0: none)
    error: int = OK
    created: float = 0.0             # time.time() when the result became ready
    processing_ms: float = 0.0       # trigger to result ready

    @property
    def verdict_name(self) -> str:
        return VERDICT_NAMES[self.verdict]


def result_fields(line: dict, classes: list[str]) -> dict:
    """The PLC's view of one verdict line (the JSON line the runner writes)."""
    boxes = [b for b in line.get("boxes") or [] if "x0" in b]
    big = max(boxes, key=lambda b: (b["x1"] - b["x0"]) * (b["y1"] - b["y0"]), default=None)
    verdict = line["verdict"]
    if verdict == "error":
        code = NO_CLASS
    elif verdict == "pass" or not line.get("defect_type"):
        code = 0
    else:
        code = classes.index(line["defect_type"]) if line["defect_type"] in classes else NO_CLASS
    return {"verdict": VERDICT_CODES[verdict], "class_code": code, "defect_type": line.get("defect_type") or "",
            "score": float(line.get("score") or 0.0), "boxes": len(boxes), "model_version": line["model_version"],
            "largest_box": [int(big["x0"]), int(big["y0"]), int(big["x1"] - big["x0"]), int(big["y1"] - big["y0"])]
            if big else [0, 0, 0, 0], "error": FRAME_ERROR if verdict == "error" else OK}


def version_id(version: str) -> int:
    """A model version as a 16-bit number: the digits that end its name (registry v0007 → 7), else 0."""
    m = re.search(r"(\d+)\D*$", version or "")
    return int(m.group(1)) % 65536 if m else 0


class Handshake:
    """Thread-safe handshake state; `on_change(snapshot)` is called after every change (outside the lock)."""

    def __init__(self, metrics, result_timeout_s: float = 2.0, ack_timeout_s: float = 5.0, products=None):
        self.metrics = metrics
        self.products = products             # the station's products (line/products.py): known, current, prepare
        self.result_timeout, self.ack_timeout = result_timeout_s, ack_timeout_s
        self.cond = threading.Condition()
        self.state = READY
        self.part: str | None = None         # part in progress (Busy) or waiting for its ack (ResultReady)
        self.taken = False                   # the capture thread has taken the current trigger
        self.triggered_at = 0.0
        self.ready_at = 0.0
        self.result = PLCResult()
        self.command_error = OK              # last refused command (cleared by an accepted trigger)
        self.product_error = OK              # the last prepare's or unprepare's error (cleared by a good one)
        self.part_product = ("", 0)          # the product (id, number) of the part in progress
        self.woken = False                   # take() returns at once: the capture thread has a product to set
        self.refused = 0
        self.listeners: list = []
        self.latencies: collections.deque = collections.deque(maxlen=10000)  # trigger → result ready, s
        self.closed = False
        metrics.set("plc_state", STATE_CODES[READY])
        self._watchdog = threading.Thread(target=self._watch, name="plc-watchdog", daemon=True)
        self._watchdog.start()

    # -- commands from the PLC (any protocol) ------------------------------------------------------------------------
    def trigger(self, part_id: str) -> int:
        """Accept a trigger for part_id (→ Busy) or refuse it; returns the error code (0 = accepted)."""
        part_id = str(part_id).strip()
        with self.cond:
            current = self.products.current if self.products is not None else None
            if not _PART_ID.fullmatch(part_id):
                code = BAD_PART_ID
            elif self.state != READY:
                code = BUSY_ERROR
                self.refused += 1
            elif self.products is not None and current is None:
                code = NO_PRODUCT
            else:
                self.state, self.part, self.taken, self.triggered_at = BUSY, part_id, False, time.time()
                self.part_product = (current.id, current.number) if current is not None else ("", 0)
                self.command_error = OK
                self.metrics.inc("plc_triggers_total")
                self.metrics.set("plc_state", STATE_CODES[BUSY])
                self.cond.notify_all()
                code = OK
            if code:
                self._refuse(code)
        self._changed()
        return code

    def ack(self) -> int:
        """The PLC has read the result (→ Ready); returns the error code (0 = accepted)."""
        with self.cond:
            if self.state != RESULT_READY:
                self.command_error = NOTHING_TO_ACK
                self.metrics.inc("plc_commands_refused_total")
                code = NOTHING_TO_ACK
            else:
                self._to_ready()
                self.metrics.inc("plc_acks_total")
                code = OK
        self._changed()
        return code

    def prepare(self, product_id: str, wait: bool = True) -> int:
        """Prepare a product between two parts (Ready → Preparing → Ready): its model loaded if it was not, the
        camera set; the next trigger is judged as it. Returns the error code (0 = prepared; else nothing changed).
        wait=False: returns once Preparing is entered (or the prepare is refused); the rest runs in a thread."""
        return self._product_command(str(product_id).strip(), "prepare", wait)

    def unprepare(self, product_id: str) -> int:
        """Unprepare the prepared product: triggers are refused (NO_PRODUCT) until the next prepare."""
        return self._product_command(str(product_id).strip(), "unprepare", True)

    def _product_command(self, product_id: str, action: str, wait: bool) -> int:
        with self.cond:
            if self.state != READY:
                code = PREPARE_BUSY
            elif self.products is None or not self.products.known(product_id):
                code = UNKNOWN_PRODUCT
            else:
                code = OK
                self.state = PREPARING
                self.metrics.set("plc_state", STATE_CODES[PREPARING])
            if code:
                self._refuse(code)
        self._changed()
        if code:
            return code
        if not wait:
            threading.Thread(target=self._switch, args=(product_id, action), name="plc-prepare", daemon=True).start()
            return OK
        return self._switch(product_id, action)

    def _switch(self, product_id: str, action: str) -> int:
        code = PREPARE_FAILED
        try:  # outside the lock: loading a package and setting the camera take time; Preparing refuses the rest
            code = getattr(self.products, action)(product_id)
        finally:
            with self.cond:
                self.state = READY
                self.metrics.set("plc_state", STATE_CODES[READY])
                if code:
                    self._refuse(code)
                else:
                    self.command_error = self.product_error = OK
                self.cond.notify_all()
            self._changed()
        return code

    def _refuse(self, code: int) -> None:
        """A refused command (lock held)."""
        self.command_error = code
        if code >= PREPARE_BUSY:
            self.product_error = code
        self.metrics.inc("plc_commands_refused_total")

    # -- the runner's side -----------------------------------------------------------------------------------------
    def take(self, timeout: float) -> str | None:
        """Wait for an accepted trigger not yet taken; return its part ID (the capture thread reads one frame).
        None after the timeout, at close, or at once when woken (the capture thread has a product to set)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.state == BUSY and not self.taken or self.closed or self.woken,
                                      timeout):
                return None
            if self.closed or self.woken:
                self.woken = False
                return None
            self.taken = True
            return self.part

    def wake(self) -> None:
        """Make the capture thread's take() return now (a product switch waits for it)."""
        with self.cond:
            self.woken = True
            self.cond.notify_all()

    def pending(self, part_id: str) -> bool:
        """Is part_id still the part the PLC waits for (not timed out)?"""
        with self.cond:
            return self.state == BUSY and self.part == part_id

    def complete(self, part_id: str, fields: dict) -> bool:
        """The verdict for part_id (→ ResultReady); False (counted) when it comes after its timeout."""
        with self.cond:
            if self.state != BUSY or self.part != part_id:
                self.metrics.inc("plc_late_results_total")
                return False
            self._result(fields)
        self._changed()
        return True

    def fail(self, part_id: str, error: int) -> None:
        """No verdict can come for part_id (source ended, frame lost): ResultReady with the error."""
        with self.cond:
            if self.state == BUSY and self.part == part_id:
                self._result({"verdict": VERDICT_CODES["error"], "error": error})
        self._changed()

    def snapshot(self) -> dict:
        current = self.products.current if self.products is not None else None
        with self.cond:
            product_state = (PRODUCT_PREPARING if self.state == PREPARING else PRODUCT_ERROR if self.product_error
                             else PRODUCT_NONE if current is None else PRODUCT_READY)
            return {"state": self.state, "part_id": self.part or "", "command_error": self.command_error,
                    "refused": self.refused, "result": asdict(self.result),
                    "product": current.id if current is not None else "",
                    "product_number": current.number if current is not None else 0, "product_state": product_state}

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    # -- internals (lock held) ---------------------------------------------------------------------------------------
    def _result(self, fields: dict) -> None:
        now = time.time()
        seq = self.result.sequence + 1
        product, number = self.part_product
        self.result = PLCResult(part_id=self.part, sequence=seq, created=now, product=product, product_number=number,
                                processing_ms=round(1000 * (now - self.triggered_at), 3), **fields)
        self.latencies.append(now - self.triggered_at)
        self.state, self.ready_at = RESULT_READY, now
        self.metrics.inc("plc_results_total")
        if self.result.error:
            self.metrics.inc(f'plc_result_errors_total|error="{self.result.error}"')
        self.metrics.set("plc_state", STATE_CODES[RESULT_READY])
        self.cond.notify_all()

    def _to_ready(self) -> None:
        self.state, self.part = READY, None
        self.metrics.set("plc_state", STATE_CODES[READY])
        self.cond.notify_all()

    def _watch(self) -> None:
        """Timeouts: a trigger with no result, a result with no acknowledgement."""
        while True:
            changed = False
            with self.cond:
                if self.closed:
                    return
                now = time.time()
                if self.state == BUSY and now - self.triggered_at >= self.result_timeout:
                    self.metrics.inc("plc_result_timeouts_total")
                    self._result({"verdict": VERDICT_CODES["error"], "error": NO_FRAME})
                    changed = True
                elif self.state == RESULT_READY and self.ack_timeout and now - self.ready_at >= self.ack_timeout:
                    self.metrics.inc("plc_ack_timeouts_total")
                    self.command_error = ACK_TIMEOUT  # the result stays readable; Ready again
                    self._to_ready()
                    changed = True
                else:
                    due = (self.triggered_at + self.result_timeout if self.state == BUSY else
                           self.ready_at + self.ack_timeout if self.state == RESULT_READY and self.ack_timeout
                           else now + 1.0)
                    self.cond.wait(max(0.001, min(1.0, due - now)))
            if changed:
                self._changed()

    def _changed(self) -> None:
        snap = self.snapshot()
        for fn in self.listeners:
            try:
                fn(snap)
            except Exception:  # noqa: BLE001 - a protocol server's trouble must not stop the handshake
                self.metrics.inc("plc_publish_errors_total")
