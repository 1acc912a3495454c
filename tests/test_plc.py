"""The PLC handshake with real clients over loopback (asyncua, pymodbus) and the webhook with a real HTTP server."""
import asyncio
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from asyncua import (
    Client,  # the plc extra: installed by make setup, so these tests never skip
)
from conftest import always_fail
from pymodbus.client import AsyncModbusTcpClient

from inspection.cli import main
from inspection.deploy.line.runner import LineRunner
from inspection.deploy.line.station import StationConfigError, load_station

VERDICTS = {"pass": "OK", "fail": "NG", "review": "REVIEW", "error": "ERROR"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected(line: dict, classes: list[str]) -> dict:
    """What the PLC must read for a verdict line, by the documented register/node definitions."""
    boxes = line["boxes"]
    big = max(boxes, key=lambda b: (b["x1"] - b["x0"]) * (b["y1"] - b["y0"])) if boxes else None
    return {"verdict": VERDICTS[line["verdict"]],
            "class": 0 if line["verdict"] == "pass" else classes.index(line["defect_type"]),
            "score": round(line["score"] * 1000), "boxes": len(boxes),
            "box": [big["x0"], big["y0"], big["x1"] - big["x0"], big["y1"] - big["y0"]] if big else [0, 0, 0, 0]}


async def _client_cert(folder: Path, name: str) -> tuple[Path, Path]:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}-cert.der", folder / f"{name}-key.pem"
    await setup_self_signed_certificate(key, cert, f"urn:test:{name}", socket.gethostname(),
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": name})
    return cert, key


async def _opcua(port: int, cert_key, user: str | None = "plc", password: str = "pw-plc") -> Client:
    c = Client(f"opc.tcp://127.0.0.1:{port}/inspection/", timeout=10)
    c.application_uri = f"urn:test:{cert_key[0].name.split('-')[0]}"
    if user:
        c.set_user(user)
        c.set_password(password)
    await c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert_key[0]},{cert_key[1]}")
    await c.connect()
    return c


class UAStation:
    def __init__(self, client: Client, station: str):
        self.c, self.station = client, station

    async def bind(self):
        ns = await self.c.get_namespace_index("urn:inspection:plc")
        self.obj = await self.c.nodes.objects.get_child([f"{ns}:{self.station}"])
        self.n = {name: await self.obj.get_child(f"{ns}:{name}") for name in
                  ("StartSingleJob", "AcknowledgeResult", "ResultReady", "Ready", "CommandError", "Error")}
        res = await self.obj.get_child(f"{ns}:Result")
        for name in ("PartId", "Verdict", "ClassCode", "DefectScore", "BoxCount", "LargestBox", "ErrorCode"):
            self.n["Result/" + name] = await res.get_child(f"{ns}:{name}")
        return self

    async def value(self, name):
        return await self.n[name].read_value()

    async def trigger(self, part: str) -> int:
        return await self.obj.call_method(self.n["StartSingleJob"], part)

    async def ack(self) -> int:
        return await self.obj.call_method(self.n["AcknowledgeResult"])

    async def wait_result(self, timeout=10.0) -> dict:
        deadline = time.time() + timeout
        while not await self.value("ResultReady"):
            assert time.time() < deadline, "no ResultReady"
            await asyncio.sleep(0.001)
        r = {k.split("/")[1]: await self.value(k) for k in self.n if k.startswith("Result/")}
        return {"part": r["PartId"], "verdict": r["Verdict"], "class": r["ClassCode"],
                "score": round(r["DefectScore"] * 1000), "boxes": r["BoxCount"], "box": list(r["LargestBox"]),
                "error": r["ErrorCode"]}


class MBStation:
    def __init__(self, port: int):
        self.c = AsyncModbusTcpClient("127.0.0.1", port=port)

    async def connect(self):
        assert await self.c.connect()
        return self

    async def bits(self) -> list[bool]:
        return (await self.c.read_discrete_inputs(0, count=7)).bits[:7]

    async def trigger(self, seq: int) -> None:
        await self.c.write_registers(0, [seq >> 16, seq & 0xFFFF])
        await self.c.write_coil(0, False)
        await self.c.write_coil(0, True)

    async def ack(self) -> None:
        await self.c.write_coil(1, False)
        await self.c.write_coil(1, True)

    async def wait_result(self, timeout=10.0) -> dict:
        deadline = time.time() + timeout
        while not (await self.bits())[2]:
            assert time.time() < deadline, "no ResultReady"
        hr = (await self.c.read_holding_registers(0, count=18)).registers
        return {"part": str((hr[2] << 16) | hr[3]), "verdict": ["", "OK", "NG", "REVIEW", "ERROR"][hr[4]],
                "class": hr[5], "score": hr[6], "boxes": hr[7], "box": hr[8:12], "error": hr[13],
                "command_error": hr[14], "state": hr[16]}


@pytest.fixture
def plc_runner(exported, tmp_path, monkeypatch):
    """`inspection run` in its own process with both PLC servers, replaying the tiny set in a loop."""
    ua, mb = _free_port(), _free_port()
    sets = {"package": exported["package"], "source.path": exported["manifest"].root, "source.loop": "true",
            "jsonl": tmp_path / "verdicts.jsonl", "log.folder": tmp_path / "log", "log.fsync": "false",
            "reload_s": 0, "station": "cell-7", "plc.opcua.port": ua, "plc.modbus.port": mb,
            "plc.opcua.username": "plc", "plc.opcua.pki": tmp_path / "pki", "plc.ack_timeout_ms": 2500}
    err = open(tmp_path / "runner.err", "w")
    cmd = [sys.executable, "-m", "inspection.cli", "run"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen(cmd, stderr=err, env=dict(os.environ, OPCUA_PASSWORD="pw-plc"))
    deadline = time.time() + 60
    while "self-check plc" not in (tmp_path / "runner.err").read_text():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "runner.err").read_text()
        time.sleep(0.1)
    yield {"ua": ua, "mb": mb, "proc": proc, "tmp": tmp_path}
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


def test_opcua_and_modbus_drive_200_parts_each_and_read_every_verdict(plc_runner, exported):
    """Real clients run trigger → result → ack; each reading matches the JSON line of that part; a client that
    drops the connection mid-part and comes back still gets its result; a trigger while busy is refused with 1;
    wrong credentials are refused; a PLC that never acknowledges gets error 4 and the next part goes through."""
    tmp, classes = plc_runner["tmp"], json.loads((Path(exported["package"]) / "metadata.json").read_text())["classes"]

    async def drive() -> tuple[list, list]:
        cert = await _client_cert(tmp / "client", "plc")
        for user, password in (("plc", "wrong"), ("intruder", "pw-plc"), (None, "")):
            with pytest.raises(Exception, match="BadUserAccessDenied|BadIdentityToken"):
                await _opcua(plc_runner["ua"], cert, user, password)
        mb = await MBStation(plc_runner["mb"]).connect()
        got_mb = []
        for i in range(200):
            assert (await mb.bits())[0], "Ready before each trigger"
            await mb.trigger(100000 + i)
            if i == 50:  # a second trigger while this part is not finished: refused, the first one goes on
                await mb.trigger(999)
                assert (await mb.c.read_holding_registers(14, count=2)).registers == [1, 1]
            if i == 60:  # the PLC drops the connection before reading the result and comes back
                mb.c.close()
                await asyncio.sleep(0.3)
                mb = await MBStation(plc_runner["mb"]).connect()
            got_mb.append(await mb.wait_result())
            await mb.ack()
        bad = await mb.c.write_register(6, 5)  # a result register is read-only
        assert bad.isError() and bad.exception_code == 2
        assert (await mb.c.write_coil(9, True)).exception_code == 2  # no such coil
        mb.c.close()

        ua = await UAStation(await _opcua(plc_runner["ua"], cert), "cell-7").bind()
        got_ua = []
        for i in range(200):
            assert await ua.trigger(f"UA-{i:04d}") == 0
            if i == 80:
                assert await ua.trigger("UA-extra") == 1  # busy: refused with the documented code
                assert await ua.value("CommandError") == 1
            if i == 120:
                await ua.c.disconnect()
                ua = await UAStation(await _opcua(plc_runner["ua"], cert), "cell-7").bind()
            got_ua.append(await ua.wait_result())
            assert await ua.ack() == 0
        # a PLC that never acknowledges: error 4 after plc.ack_timeout_ms, then Ready again
        assert await ua.trigger("UA-noack") == 0
        await ua.wait_result()
        deadline = time.time() + 10
        while not await ua.value("Ready"):
            assert time.time() < deadline
            await asyncio.sleep(0.05)
        assert await ua.value("CommandError") == 4 and await ua.value("Error")
        assert await ua.trigger("UA-after") == 0 and (await ua.wait_result())["part"] == "UA-after"
        assert await ua.ack() == 0 and await ua.value("CommandError") == 0
        assert await ua.ack() == 5  # nothing to acknowledge
        assert await ua.trigger("") == 6 and await ua.trigger("x" * 65) == 6  # part IDs: 1-64 printable characters
        assert await ua.value("Ready")  # a refused command leaves the handshake where it was
        await ua.c.disconnect()
        return got_mb, got_ua

    got_mb, got_ua = asyncio.run(drive())
    proc = plc_runner["proc"]
    proc.terminate()
    assert proc.wait(30) == 0
    lines = {x["part_id"]: x for x in map(json.loads, (tmp / "verdicts.jsonl").read_text().splitlines())}
    assert "999" not in lines and "UA-extra" not in lines  # refused triggers took no frame
    assert len(lines) == 200 + 200 + 2
    for got in got_mb + got_ua:
        line = lines[got["part"]]
        assert {k: got[k] for k in ("verdict", "class", "score", "boxes", "box")} == _expected(line, classes)
        assert got["error"] == 0
    assert [g["part"] for g in got_mb] == [str(100000 + i) for i in range(200)]
    assert [g["part"] for g in got_ua] == [f"UA-{i:04d}" for i in range(200)]


def _drive(runner: LineRunner, thread: threading.Thread, drive):
    """Run the client coroutine `drive` against a runner running in `thread`; stop the runner whatever happens."""
    try:
        return asyncio.run(drive())
    finally:
        runner.stop()
        thread.join(30)


def _in_process(exported, tmp_path, **sets) -> LineRunner:
    values = {"package": exported["package"], "source.path": exported["manifest"].root, "source.kind": "simulated",
              "jsonl": str(tmp_path / "verdicts.jsonl"), "log.folder": str(tmp_path / "log"), "reload_s": 0,
              "log.fsync": False}
    values.update(sets)
    return LineRunner(load_station(None, [f"{k}={v}" for k, v in values.items()]))


def test_a_trigger_without_a_frame_times_out_with_error_2_and_the_line_recovers(exported, tmp_path):
    (tmp_path / "incoming").mkdir()
    port = _free_port()
    runner = _in_process(exported, tmp_path, **{"source.kind": "watch", "source.path": tmp_path / "incoming",
                                                "plc.modbus.port": port, "plc.result_timeout_ms": 300,
                                                "http.port": _free_port()})
    runner.self_check()
    thread = threading.Thread(target=runner.run)
    thread.start()

    async def drive():
        mb = await MBStation(port).connect()
        await mb.trigger(7)
        first = await mb.wait_result()
        assert (await mb.bits())[6]  # Error
        await mb.ack()
        assert (await mb.bits())[0]  # Ready again
        await mb.trigger(8)  # now a frame arrives: a normal result
        image = next(Path(exported["manifest"].root).rglob("*.png"))
        (tmp_path / "incoming" / "p8.png").write_bytes(image.read_bytes())
        second = await mb.wait_result()
        await mb.ack()
        mb.c.close()
        return first, second

    try:
        first, second = asyncio.run(drive())
        health = runner.health()
    finally:
        runner.stop()
        thread.join(30)
    assert first["part"] == "7" and first["verdict"] == "ERROR" and first["error"] == 2
    assert second["part"] == "8" and second["verdict"] in ("OK", "NG", "REVIEW") and second["error"] == 0
    assert health["plc"]["result_timeouts"] == 1 and health["plc"]["triggers"] == 2
    assert runner.metrics.get("plc_result_timeouts_total") == 1


def test_opcua_certificate_login_only_for_trusted_clients(exported, tmp_path):
    """With plc.opcua.trusted_clients, a PLC whose certificate is in that folder logs in by certificate; another
    certificate cannot even open a secure channel."""
    async def certs():
        return await _client_cert(tmp_path / "plc", "plc"), await _client_cert(tmp_path / "other", "rogue")

    (good_cert, good_key), (bad_cert, bad_key) = asyncio.run(certs())
    (tmp_path / "trusted").mkdir()
    shutil.copy(good_cert, tmp_path / "trusted")  # the integrator puts the PLC's certificate there
    port = _free_port()
    runner = _in_process(exported, tmp_path, **{"source.loop": "true", "plc.opcua.port": port, "station": "cell-c",
                                                "plc.opcua.trusted_clients": tmp_path / "trusted",
                                                "plc.opcua.pki": tmp_path / "pki"})
    runner.self_check()
    thread = threading.Thread(target=runner.run)
    thread.start()

    async def drive():
        c = Client(f"opc.tcp://127.0.0.1:{port}/inspection/", timeout=10)
        c.application_uri = "urn:test:plc"
        await c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{good_cert},{good_key}")
        await c.load_client_certificate(str(good_cert))
        await c.load_private_key(good_key)
        await c.connect()
        ua = await UAStation(c, "cell-c").bind()
        assert await ua.trigger("C-1") == 0
        got = await ua.wait_result()
        assert await ua.ack() == 0
        await c.disconnect()
        rogue = Client(f"opc.tcp://127.0.0.1:{port}/inspection/", timeout=5)
        rogue.application_uri = "urn:test:rogue"
        await rogue.set_security_string(f"Basic256Sha256,SignAndEncrypt,{bad_cert},{bad_key}")
        await rogue.load_client_certificate(str(bad_cert))
        await rogue.load_private_key(bad_key)
        with pytest.raises(Exception, match="Bad"):  # BadSecurityChecksFailed: the channel is refused
            await rogue.connect()
        return got

    got = _drive(runner, thread, drive)
    assert got["part"] == "C-1" and got["verdict"] in ("OK", "NG", "REVIEW")


def test_plc_config_errors_name_the_field(exported, tmp_path, capsys):
    with pytest.raises(StationConfigError, match="plc.opcua.port and plc.modbus.port are both 4840"):
        load_station(None, ["plc.opcua.port=4840", "plc.modbus.port=4840", "plc.opcua.anonymous=true"])
    with pytest.raises(StationConfigError, match="plc.opcua needs a way to log in"):
        load_station(None, ["plc.opcua.port=4840"])
    with pytest.raises(StationConfigError, match="plc.opcua.security must list"):
        load_station(None, ["plc.opcua.port=4840", "plc.opcua.anonymous=true", "plc.opcua.security=[Basic128]"])
    with pytest.raises(StationConfigError, match="plc.modbus.port must be a TCP port"):
        load_station(None, ["plc.modbus.port=70000"])
    with pytest.raises(StationConfigError, match="webhook.url must start with http"):
        load_station(None, ["webhook.url=ftp://x"])
    from inspection.deploy.line.station import WebhookConfig
    from inspection.deploy.line.webhook import WebhookSink
    with pytest.raises(StationConfigError, match="WEBHOOK_SECRET"):  # an empty key would sign for anyone
        WebhookSink(WebhookConfig(url="http://127.0.0.1:9/"), "", None)
    with pytest.raises(StationConfigError, match="choose one"):
        load_station(None, ["plc.modbus.port=5020", "source.part_id=trigger", "mqtt.host=x"])
    with socket.socket() as busy:  # a port in use: the runner stops at start-up, naming the field
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["run", "--set", f"package={exported['package']}", "--set",
                     f"source.path={exported['manifest'].root}", "--set", f"log.folder={tmp_path / 'log'}",
                     "--set", f"plc.modbus.port={busy.getsockname()[1]}", "--set", "jsonl="])
    assert code == 2 and "plc.modbus.port: cannot listen on" in capsys.readouterr().err


class _Receiver:
    """A real HTTP endpoint that records each POST (and can answer 503 for a while)."""

    def __init__(self, port: int):
        self.got: list[tuple[dict, bytes]] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):  # the test reads what arrived, not the access log
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_webhook_gets_every_failure_once_signed_even_after_the_endpoint_was_down(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "s3cret-shared-with-the-mes")
    port = _free_port()
    package = always_fail(exported["package"], tmp_path / "pkg")
    runner = _in_process(exported, tmp_path, **{"package": package, "webhook.url": f"http://127.0.0.1:{port}/hook",
                                                "webhook.retry_max_s": 0.5, "webhook.flush_s": 30,
                                                "source.loop": "true", "source.limit": 60, "queue.policy": "block"})
    runner.self_check()
    thread = threading.Thread(target=runner.run)
    thread.start()
    deadline = time.time() + 30
    while runner.metrics.get("frames_total") < 60:  # the whole run is judged while the endpoint is down
        assert time.time() < deadline, "the line waited for the webhook"
        time.sleep(0.05)
    assert runner.metrics.get("webhook_delivered_total") == 0 and runner.metrics.get("webhook_retries_total") >= 1
    receiver = _Receiver(port)  # the endpoint comes back
    try:
        thread.join(60)
    finally:
        receiver.close()
    lines = [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    failed = [x for x in lines if x["verdict"] in ("fail", "review", "error")]
    assert len(failed) == 60
    bodies = [json.loads(b) for _, b in receiver.got]
    assert sorted(b["part_id"] for b in bodies) == sorted(x["part_id"] for x in failed)  # each once
    for headers, body in receiver.got:
        expect = "sha256=" + hmac.new(b"s3cret-shared-with-the-mes", body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Inspection-Signature"], expect)
    assert len({h["X-Inspection-Event"] for h, _ in receiver.got}) == 60
    assert runner.metrics.get("webhook_dropped_total") == 0 and runner.metrics.get("webhook_delivered_total") == 60


def test_webhook_queue_bound_drops_the_oldest_and_counts_them(tmp_path):
    from inspection.deploy.line.prometheus import Metrics
    from inspection.deploy.line.station import WebhookConfig
    from inspection.deploy.line.webhook import WebhookSink

    port = _free_port()
    metrics = Metrics()
    sink = WebhookSink(WebhookConfig(url=f"http://127.0.0.1:{port}/", queue=5, retry_max_s=0.2), "k" * 16, metrics)
    for i in range(20):
        sink.put({"part_id": f"p{i}", "verdict": "fail"})
    sink.put({"part_id": "ok", "verdict": "pass"})  # not a configured verdict: never sent
    assert metrics.get("webhook_dropped_total") == 15
    receiver = _Receiver(port)
    try:
        deadline = time.time() + 10
        while len(receiver.got) < 5 and time.time() < deadline:
            time.sleep(0.05)
        sink.close(5)
    finally:
        receiver.close()
    got = [json.loads(b)["part_id"] for _, b in receiver.got]
    # the oldest waiting verdict is dropped, except one being posted at that moment (it may still arrive)
    assert len(got) == len(set(got)) == 5 and got[1:] == [f"p{i}" for i in range(16, 20)], got
    assert metrics.get("webhook_delivered_total") + metrics.get("webhook_dropped_total") == 20


def test_modbus_writes_past_the_map_or_with_odd_coil_values_are_refused_whole_before_anything_acts():
    """A multi-coil write that reaches past the two coils used to fire Trigger and Ack before failing; a Write
    Single Coil with 0x1234 was taken as on. Both are refused with the documented exception, counted, and act
    on nothing; a proper write still fires."""
    from dataclasses import asdict

    from inspection.deploy.plc.handshake import PLCResult
    from inspection.deploy.plc.modbus import ModbusServer

    class Recorder:  # stands in for the handshake, to see what acts
        def __init__(self):
            self.calls = []

        def trigger(self, part):
            self.calls.append(("trigger", part))

        def ack(self):
            self.calls.append(("ack",))

        def snapshot(self):
            return {"state": "Ready", "part_id": "", "command_error": 0, "refused": 0, "result": asdict(PLCResult())}

    from inspection.deploy.line.prometheus import Metrics

    hs, counts, port = Recorder(), Metrics(), _free_port()

    async def drive():
        server = ModbusServer(hs, "127.0.0.1", port, counts)
        await server.start()
        c = AsyncModbusTcpClient("127.0.0.1", port=port)
        assert await c.connect()
        try:
            r = await c.write_coils(0, [True] * 6)
            assert r.isError() and r.exception_code == 2
            r = await c.write_coils(1, [True, True])
            assert r.isError() and r.exception_code == 2
            assert hs.calls == []
            # Write Single Coil with a value that is neither 0xFF00 nor 0x0000 (raw PDU: fc 5, address 0, 0x1234)
            from pymodbus.pdu.bit_message import WriteSingleCoilRequest

            odd = WriteSingleCoilRequest(address=0, bits=[True])
            odd.encode = lambda: bytes.fromhex("00001234")
            r = await c.execute(False, odd)
            assert r.isError() and r.exception_code == 3
            assert hs.calls == []
            assert counts.get("plc_bad_requests_total") == 3
            assert not (await c.write_coils(0, [False, False])).isError()
            assert not (await c.write_coil(0, True)).isError()
            assert hs.calls == [("trigger", "0")]
        finally:
            c.close()
            await server.stop()

    asyncio.run(drive())


def test_opcua_refuses_channels_without_the_configured_security_and_passwords_in_clear(exported, tmp_path,
                                                                                      monkeypatch):
    """Only Basic256Sha256 Sign&Encrypt configured: a client asking for security None used to get a None channel
    (asyncua falls back to it), send the password in clear and start jobs. Its session is refused now (the
    channel still serves discovery, as OPC UA clients need it); the proper client still works."""
    monkeypatch.setenv("OPCUA_PASSWORD", "pw-plc")
    port = _free_port()
    runner = _in_process(exported, tmp_path, **{"source.loop": "true", "plc.opcua.port": port, "station": "cell-s",
                                                "plc.opcua.username": "plc", "plc.opcua.pki": tmp_path / "pki"})
    runner.self_check()
    thread = threading.Thread(target=runner.run)
    thread.start()

    from asyncua import ua as ua_types

    async def drive():
        cert = await _client_cert(tmp_path / "client", "plc")
        plain = Client(f"opc.tcp://127.0.0.1:{port}/inspection/", timeout=5)
        plain.set_user("plc")
        plain.set_password("pw-plc")
        # an attacker's client does not stop where asyncua's does (no endpoint offers None): it takes the secure
        # endpoint's description and goes on over a None channel
        monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda endpoints, mode, uri: next(
            e for e in endpoints if e.SecurityMode == ua_types.MessageSecurityMode.SignAndEncrypt)))
        with pytest.raises(Exception, match="BadSecurityPolicyRejected"):  # no session on a None channel
            await plain.connect()
        monkeypatch.undo()
        monkeypatch.setenv("OPCUA_PASSWORD", "pw-plc")
        ua = await UAStation(await _opcua(port, cert), "cell-s").bind()
        assert await ua.trigger("S-1") == 0
        got = await ua.wait_result()
        assert await ua.ack() == 0
        await ua.c.disconnect()
        return got

    got = _drive(runner, thread, drive)
    assert got["part"] == "S-1"
