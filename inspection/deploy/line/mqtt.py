"""The MQTT output (a verdict per part), trigger input (part IDs announced by the line controller) and product
input (a product ID on mqtt.product_topic prepares that product; the answer goes to <product_topic>/state), on
paho-mqtt. torch-free."""
from __future__ import annotations

import collections
import json
import os
import queue
import threading
import time

from inspection.deploy.line.prometheus import Metrics


class MQTTOutput:
    """Publishes each verdict; paho queues (bounded) while the broker is away and reconnects by itself."""

    def __init__(self, cfg, station: str, metrics: Metrics, trigger: bool = False, select=None):
        import paho.mqtt.client as mqtt

        self.topic, self.qos, self.metrics = cfg.topic.format(station=station), cfg.qos, metrics
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id or f"inspection-{station}")
        if cfg.username:  # the password stays out of config files
            self.client.username_pw_set(cfg.username, os.environ.get("MQTT_PASSWORD", ""))
        self.client.max_queued_messages_set(10000)
        self.client.reconnect_delay_set(0.5, 10)
        self.triggers: queue.Queue = queue.Queue(1000)  # part IDs announced by the line controller, oldest first
        self.trigger_topic = cfg.trigger_topic.format(station=station) if trigger else None
        self.select = select  # prepares a product: select(product ID) → 0 or a command error (docs/plc.md)
        self.product_topic = cfg.product_topic.format(station=station) if select is not None else None
        self.client.on_connect = self._connected
        self.client.on_disconnect = lambda *a: metrics.set("mqtt_connected", 0)
        self.client.on_message = self._message
        self.client.connect_async(cfg.host, cfg.port, cfg.keepalive)
        self.client.loop_start()
        self.pending: collections.deque = collections.deque(maxlen=10000)

    def _connected(self, client, userdata, flags, reason, properties=None) -> None:
        if getattr(reason, "is_failure", False):  # e.g. not authorized: paho retries, the metrics say why
            self.metrics.set("mqtt_connected", 0)
            self.metrics.inc("mqtt_connect_refused_total")
            return
        self.metrics.set("mqtt_connected", 1)
        if self.trigger_topic:
            client.subscribe(self.trigger_topic, qos=1)
        if self.product_topic:
            client.subscribe(self.product_topic, qos=1)

    def _message(self, client, userdata, msg) -> None:
        """A trigger: the payload is the part ID (plain text, or JSON with a part_id field); on the product topic,
        a product ID (plain text, or JSON with a product field)."""
        text = msg.payload.decode("utf-8", "replace").strip()
        key = "product" if msg.topic == self.product_topic else "part_id"
        try:
            part = json.loads(text)
            part = str(part[key]) if isinstance(part, dict) else str(part)
        except (ValueError, KeyError):
            part = text
        if key == "product":  # loading a model takes time: not on paho's network thread
            threading.Thread(target=self._prepare, args=(part,), name="mqtt-product", daemon=True).start()
            return
        try:
            self.triggers.put_nowait(part)
        except queue.Full:
            self.triggers.get_nowait()
            self.triggers.put_nowait(part)
            self.metrics.inc("triggers_dropped_total")

    def _prepare(self, product: str) -> None:
        error = self.select(product)
        self.client.publish(self.product_topic + "/state", json.dumps({"product": product, "error": error,
                                                                       "prepared": not error}), qos=1, retain=True)

    def publish(self, payload: str) -> None:
        info = self.client.publish(self.topic, payload, qos=self.qos)
        if info.rc != 0:
            self.metrics.inc("mqtt_publish_failures_total")
        elif self.qos:
            self.pending.append(info)

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.time() + timeout
        for info in list(self.pending):
            try:
                info.wait_for_publish(max(0.0, deadline - time.time()))
            except (RuntimeError, ValueError):
                pass
        self.client.loop_stop()
        self.client.disconnect()
