"""Webhook sink: each verdict line (or only failures) POSTed as JSON to a URL, signed, retried, never in the way.

    POST <webhook.url>
    Content-Type: application/json
    X-Inspection-Event: <uuid, the same on every retry of one verdict: receivers drop repeats by it>
    X-Inspection-Signature: sha256=<hex HMAC-SHA256 of the raw body with the secret in WEBHOOK_SECRET>

A bounded queue in memory (webhook.queue; when full the oldest waiting verdict is dropped and counted, never one
being posted at that moment, which may still arrive) and one
sender thread: the line only appends. A 2xx answer delivers; a connection error, a timeout, 408, 429 or 5xx is
retried, oldest first, with back-off (0.5 s doubling to webhook.retry_max_s); another 4xx is refused and counted.
Stdlib only (urllib), so the line side needs nothing more.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid

LOG = logging.getLogger("inspection.webhook")
MIN_SECRET = 16  # characters of WEBHOOK_SECRET, spaces around it not counted


def signature(secret: bytes, body: bytes) -> str:
    """The X-Inspection-Signature header's value (receivers compare it with hmac.compare_digest)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink:
    def __init__(self, cfg, secret: str, metrics, log=LOG):
        if len(secret.strip()) < MIN_SECRET:  # a short or blank key proves nothing: anyone could sign (or guess it)
            from inspection.deploy.line.station import StationConfigError

            found = "empty" if not secret else "blank" if not secret.strip() else f"{len(secret.strip())} characters"
            raise StationConfigError(f"webhook.url is set but the WEBHOOK_SECRET environment variable is {found}: "
                                     f"set a shared secret of at least {MIN_SECRET} characters (not counting spaces) "
                                     "that the receiver checks X-Inspection-Signature with")
        self.cfg, self.secret, self.metrics, self.log = cfg, secret.encode(), metrics, log
        self.waiting: collections.deque = collections.deque()
        self.sending = None  # the event being posted right now: never dropped (it may arrive)
        self.cond = threading.Condition()
        self.closing = False
        self.deadline = 0.0
        self.thread = threading.Thread(target=self._send_all, name="webhook", daemon=True)
        self.thread.start()

    def put(self, line: dict) -> None:
        """Queue one verdict line if its verdict is configured (never blocks)."""
        if line["verdict"] not in self.cfg.verdicts:
            return
        with self.cond:
            if len(self.waiting) >= self.cfg.queue:  # drop the oldest, unless it is being posted: then the next
                posting = self.waiting[0][0] == self.sending
                if len(self.waiting) > 1 or not posting:
                    del self.waiting[1 if posting else 0]
                    self.metrics.inc("webhook_dropped_total")
            self.waiting.append((str(uuid.uuid4()), json.dumps(line).encode()))
            self.metrics.set("webhook_waiting", len(self.waiting))
            self.cond.notify()

    def close(self, timeout: float) -> None:
        """Deliver what waits for up to `timeout` s more, then count the rest as dropped."""
        with self.cond:
            self.closing, self.deadline = True, time.time() + timeout
            self.cond.notify()
        self.thread.join(timeout + self.cfg.timeout_s + 1)
        with self.cond:
            if self.waiting:
                self.metrics.inc("webhook_dropped_total", len(self.waiting))
                self.log.warning(f"webhook: {len(self.waiting)} verdict(s) not delivered to {self.cfg.url} at stop")
                self.waiting.clear()

    def _send_all(self) -> None:
        delay = 0.5
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.waiting or self.closing)
                if not self.waiting or self.closing and time.time() >= self.deadline:
                    return
                event, body = self.waiting[0]
                self.sending = event
            outcome = self._post(event, body)
            with self.cond:
                self.sending = None
                if outcome != "retry":
                    if self.waiting and self.waiting[0][0] == event:  # not dropped meanwhile by a full queue
                        self.waiting.popleft()
                    self.metrics.inc("webhook_delivered_total" if outcome == "ok" else "webhook_refused_total")
                    self.metrics.set("webhook_waiting", len(self.waiting))
                    self.metrics.set("webhook_up", 1)
                    delay = 0.5
                    continue
                self.metrics.inc("webhook_retries_total")
                self.metrics.set("webhook_up", 0)
                wait = delay if not self.closing else min(delay, max(0.0, self.deadline - time.time()))
                self.cond.wait(wait)  # a close() wakes it up early
                delay = min(delay * 2, self.cfg.retry_max_s)

    def _post(self, event: str, body: bytes) -> str:
        """'ok', 'refused' (a 4xx the receiver means) or 'retry'."""
        req = urllib.request.Request(self.cfg.url, body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "inspection-runner", "X-Inspection-Event": event,
            "X-Inspection-Signature": signature(self.secret, body)})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                resp.read()
                return "ok"
        except urllib.error.HTTPError as exc:
            if exc.code in (408, 429) or exc.code >= 500:
                return "retry"
            self.log.warning(f"webhook: {self.cfg.url} refused a verdict with HTTP {exc.code}; not retried")
            return "refused"
        except (OSError, ValueError):  # refused, reset, timed out, unreachable
            return "retry"
