"""Where each verdict goes: the JSON-lines stream, the PLC handshake, MQTT, the webhook and the metrics.
torch-free.

    outputs = Outputs(cfg, metrics, log, products=products, select=runner.select)
    verdict = outputs.emit(frame, result, error, done, model_version, classes)   # the judging model's

Every verdict line names the part's product (the one stamped on its frame at capture) and the model version
that judged it; its boxes are in frame pixels (the frame's ROI offset added back).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from inspection.core.boxes import Box
from inspection.deploy.line.frames import Frame
from inspection.deploy.line.mqtt import MQTTOutput
from inspection.deploy.line.station import StationConfig
from inspection.deploy.line.webhook import WebhookSink
from inspection.deploy.plc.handshake import result_fields
from inspection.deploy.plc.link import PLCLink
from inspection.deploy.runtime import Inspection


class Outputs:
    """The station's configured outputs, opened at construction; start() starts the PLC servers."""

    def __init__(self, cfg: StationConfig, metrics, log, out=None, products=None, select=None):
        self.cfg, self.metrics = cfg, metrics
        if out is None and cfg.jsonl not in ("", "-"):
            Path(cfg.jsonl).parent.mkdir(parents=True, exist_ok=True)
            out = open(cfg.jsonl, "a", buffering=1)
        self.out = out if out is not None else (sys.stdout if cfg.jsonl == "-" else None)
        self.mqtt = (MQTTOutput(cfg.mqtt, cfg.station, metrics, cfg.source.part_id == "trigger",
                                select if cfg.mqtt.product_topic else None) if cfg.mqtt.host else None)
        self.plc = (PLCLink(cfg.plc, cfg.station, metrics, products) if cfg.plc.opcua.port or cfg.plc.modbus.port
                    else None)
        self.webhook = (WebhookSink(cfg.webhook, os.environ.get("WEBHOOK_SECRET", ""), metrics, log)
                        if cfg.webhook.url else None)

    def start(self) -> dict[str, str]:
        """Start the PLC servers; what each output listens on or sends to, for the start-up report."""
        report = {}
        if self.plc is not None:
            report["plc"] = ", ".join(self.plc.start()) + "; one frame per trigger"
        if self.webhook is not None:
            report["webhook"] = f"{self.cfg.webhook.url} ({', '.join(self.cfg.webhook.verdicts)}" + \
                (", signed)" if self.webhook.secret else ", UNSIGNED: set WEBHOOK_SECRET)")
        return report

    def emit(self, frame: Frame, result: Inspection | None, error: str | None, done: float, version: str,
             classes: list[str]) -> str:
        """Send one part's verdict line everywhere; returns the verdict."""
        verdict = "error" if result is None else result.verdict
        x, y = (frame.roi or (0, 0))[:2]  # outputs give boxes in frame pixels
        line = {"part_id": frame.part_id, "station": self.cfg.station, "product": frame.product,
                "ts": round(frame.ts, 3), "verdict": verdict,
                "score": None if result is None else round(result.score, 6),
                "defect_type": None if result is None else result.defect_type,
                "boxes": [] if result is None else [Box(b.x0 + x, b.y0 + y, b.x1 + x, b.y1 + y, b.score,
                                                        b.area).to_dict() for b in result.boxes],
                "latency_ms": round(1000 * (done - frame.ts), 2), "model_version": version}
        if frame.camera:
            line["camera"] = frame.camera
        if error:
            line["error"] = error
        text = json.dumps(line)
        if self.out is not None:
            self.out.write(text + "\n")
            self.out.flush()
        if self.plc is not None:
            self.plc.handshake.complete(frame.part_id, result_fields(line, classes))
        if self.mqtt is not None:
            self.mqtt.publish(text)
        if self.webhook is not None:
            self.webhook.put(line)
        self.metrics.inc("frames_total")
        self.metrics.inc(f"verdicts_total|verdict=\"{verdict}\"")
        if frame.product:  # product IDs are letters, digits, . _ - (station.py): a plain label value
            self.metrics.inc(f"product_verdicts_total|product=\"{frame.product}\",verdict=\"{verdict}\"")
        if error:
            self.metrics.inc("frames_error_total")
        self.metrics.observe(done - frame.ts)
        return verdict

    def health(self) -> dict:
        out = {}
        if self.plc is not None:
            snap = self.plc.handshake.snapshot()
            out["plc"] = {"state": snap["state"], "part_id": snap["part_id"], "command_error": snap["command_error"],
                          "product": snap["product"],
                          **{k: int(self.metrics.get(f"plc_{k}_total")) for k in
                             ("triggers", "results", "acks", "commands_refused", "result_timeouts", "ack_timeouts")}}
        if self.webhook is not None:
            out["webhook"] = {k: int(self.metrics.get(f"webhook_{k}")) for k in
                              ("waiting", "delivered_total", "retries_total", "dropped_total", "refused_total")}
        return out

    def close(self) -> None:
        if self.mqtt is not None:
            self.mqtt.close()
        if self.plc is not None:
            self.plc.stop()
        if self.webhook is not None:
            self.webhook.close(self.cfg.webhook.flush_s)
