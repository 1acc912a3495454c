"""The genicam source against a real GigE Vision device on loopback: Aravis' arv-fake-gv-camera-0.8 (GVCP/GVSP
over UDP), installed by `make genicam`. The emulator sends a test pattern, so these tests check the path (frames,
triggers, losses, reconnects, errors), not the verdicts."""
import asyncio
import json
import shutil
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest
from test_plc import MBStation, UAStation, _client_cert, _free_port, _opcua

from inspection.cli import main
from inspection.deploy.line.genicam import BAYER, list_cameras, to_image
from inspection.deploy.line.runner import LineRunner
from inspection.deploy.line.station import load_station

FAKE = shutil.which("arv-fake-gv-camera-0.8") or "/usr/bin/arv-fake-gv-camera-0.8"


class FakeCamera:
    """arv-fake-gv-camera-0.8 on 127.0.0.1 with a serial number; `loss`: GVSP packets lost per thousand."""

    def __init__(self, serial: str, loss: int = 0):
        self.serial, self.loss, self.proc = serial, loss, None

    def start(self) -> "FakeCamera":
        cmd = [FAKE, "-i", "127.0.0.1", "-s", self.serial] + (["-r", str(self.loss)] if self.loss else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not any(c["serial"] == self.serial for c in list_cameras()):
            assert self.proc.poll() is None and time.time() < deadline, "the fake camera did not come up"
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def camera():
    cams = []

    def start(serial="TEST01", loss=0):
        cams.append(FakeCamera(serial, loss).start())
        return cams[-1]
    yield start
    for c in cams:
        c.kill()


def _station(exported, tmp_path, **sets):
    values = {"package": exported["package"], "source.kind": "genicam", "source.genicam.device": "TEST01",
              "jsonl": tmp_path / "verdicts.jsonl", "log.folder": tmp_path / "log", "log.fsync": False,
              "reload_s": 0, "source.reconnect_max_s": 0.5}
    values.update(sets)
    return load_station(None, [f"{k}={v}" for k, v in values.items()])


def _lines(tmp_path) -> list[dict]:
    path = tmp_path / "verdicts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_free_run_frames_are_judged_end_to_end(exported, tmp_path, camera, capsys):
    """`inspection run` with source.kind genicam judges the emulator's frames; the camera's frame ID and
    timestamp travel with each verdict line and each failure record."""
    camera("TEST01")
    code = main(["run", "--set", f"package={exported['package']}", "--set", "source.kind=genicam",
                 "--set", "source.genicam.device=TEST01", "--set", "source.genicam.pixel_format=Mono8",
                 "--set", "source.genicam.features={AcquisitionFrameRate: 50}", "--set", "source.limit=12",
                 "--set", f"jsonl={tmp_path / 'verdicts.jsonl'}", "--set", f"log.folder={tmp_path / 'log'}",
                 "--set", "log.verdicts=[pass, fail, review, error]", "--set", "reload_s=0"])
    assert code == 0, capsys.readouterr().err
    lines = _lines(tmp_path)
    assert len(lines) == 12 and all(x["verdict"] in ("pass", "review", "fail") for x in lines)
    ids = [x["camera"]["frame_id"] for x in lines]
    assert ids == sorted(ids) and len(set(ids)) == 12 and all(x["camera"]["timestamp_ns"] > 0 for x in lines)
    from inspection.deploy.store.factory import open_store

    records = open_store("", tmp_path / "log", create=False).records(limit=50)
    assert sorted(r.camera["frame_id"] for r in records) == sorted(ids)
    assert "camera Aravis Fake serial TEST01" in capsys.readouterr().err  # the log names the camera it opened


def test_a_wrong_serial_exits_2_naming_it(exported, tmp_path, camera, capsys):
    camera("TEST01")
    assert main(["run", "--set", f"package={exported['package']}", "--set", "source.kind=genicam",
                 "--set", "source.genicam.device=NOSUCH7", "--set", f"log.folder={tmp_path / 'log'}"]) == 2
    err = capsys.readouterr().err
    assert "source.genicam.device 'NOSUCH7': no such camera found" in err and "TEST01" in err
    assert main(["run", "--set", f"package={exported['package']}", "--set", "source.kind=genicam",
                 "--set", "source.genicam.device=TEST01", "--set", "source.genicam.features={NoSuchFeature: 1}",
                 "--set", f"log.folder={tmp_path / 'log'}"]) == 2
    assert "source.genicam.features.NoSuchFeature" in capsys.readouterr().err
    assert main(["run", "--set", f"package={exported['package']}", "--set", "source.kind=genicam",
                 "--set", "source.genicam.device=TEST01", "--set", "source.genicam.features={SensorWidth: 100}",
                 "--set", f"log.folder={tmp_path / 'log'}"]) == 2
    assert "read-only" in capsys.readouterr().err


def _start(runner: LineRunner) -> threading.Thread:
    runner.self_check()
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


def _wait(thread, cond, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert thread.is_alive() and time.time() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("loss", [50, 2])
def test_lost_packets_make_incomplete_frames_that_are_counted_and_never_judged(exported, tmp_path, camera, loss):
    """-r 50 (5 % of GVSP packets lost): every 512x512 frame misses some, none is judged, the line goes on
    without reconnecting; -r 2: a mix, and exactly the complete frames are judged."""
    camera("TEST01", loss=loss)
    runner = LineRunner(_station(exported, tmp_path, **{"source.genicam.timeout_ms": 1000}))
    thread, m = _start(runner), runner.metrics
    try:
        _wait(thread, lambda: m.get("camera_frames_incomplete_total") >= 10 and m.get("frames_total") >= (
            0 if loss == 50 else 5), "incomplete frames counted")
        health = runner.health()
    finally:
        runner.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert len(_lines(tmp_path)) == m.get("frames_total") == m.get("camera_frames_total")  # complete ones only
    assert (m.get("frames_total") == 0) == (loss == 50)
    assert m.get("camera_packets_missing_total") > 0 and m.get("source_reconnects_total") == 0
    assert health["source"] == "connected" and health["camera"]["frames_incomplete"] >= 10


def test_a_killed_camera_is_reconnected_and_frames_resume(exported, tmp_path, camera):
    cam = camera("TEST01")
    runner = LineRunner(_station(exported, tmp_path, **{"source.genicam.timeout_ms": 500}))
    thread = _start(runner)
    wait = lambda cond, what: _wait(thread, cond, what)  # noqa: E731
    try:
        wait(lambda: len(_lines(tmp_path)) >= 5, "frames before the kill")
        cam.kill()
        wait(lambda: runner.metrics.get("source_reconnects_total") >= 1, "the loss noticed")
        assert runner.health()["status"] == "down" and runner.health()["source"] == "reconnecting"
        before = len(_lines(tmp_path))
        camera("TEST01")  # the camera comes back (power restored, cable plugged in)
        wait(lambda: len(_lines(tmp_path)) >= before + 5, "frames after the restart")
        assert runner.health()["source"] == "connected" and runner.health()["camera"]["reconnects"] >= 1
    finally:
        runner.stop()
        thread.join(30)
    assert not thread.is_alive()


@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
def test_plc_triggers_fire_the_camera_and_each_verdict_is_that_parts(exported, tmp_path, camera, protocol,
                                                                      monkeypatch):
    """trigger software: each PLC trigger sends TriggerSoftware; the frame the camera delivers for it is judged
    under the PLC's part ID, one frame per trigger, its camera frame ID in the verdict line."""
    camera("TEST01")
    port = _free_port()
    sets = {"source.genicam.trigger": "software", f"plc.{protocol}.port": port, "station": "cell-9"}
    if protocol == "opcua":
        sets.update({"plc.opcua.username": "plc", "plc.opcua.pki": tmp_path / "pki"})
    monkeypatch.setenv("OPCUA_PASSWORD", "pw-plc")
    runner = LineRunner(_station(exported, tmp_path, **sets))
    thread = _start(runner)

    async def drive() -> list[dict]:
        if protocol == "modbus":
            plc = await MBStation(port).connect()
            parts = [str(5000 + i) for i in range(10)]
        else:
            plc = await UAStation(await _opcua(port, await _client_cert(tmp_path / "client", "plc")), "cell-9").bind()
            parts = [f"UA-{i}" for i in range(10)]
        got = []
        for part in parts:
            await asyncio.sleep(0.15)  # a free-running camera would have sent several frames by now
            await plc.trigger(int(part) if protocol == "modbus" else part)
            got.append(await plc.wait_result())
            await plc.ack()
        if protocol == "modbus":
            plc.c.close()
        else:
            await plc.c.disconnect()
        return got

    try:
        got = asyncio.run(drive())
    finally:
        runner.stop()
        thread.join(30)
    lines = _lines(tmp_path)
    assert [g["part"] for g in got] == [x["part_id"] for x in lines]  # one frame per trigger, in order
    assert all(g["error"] == 0 for g in got) and len({x["camera"]["frame_id"] for x in lines}) == 10
    assert runner.metrics.get("camera_frames_total") == 10  # the camera sent a frame only when triggered


def test_pixel_formats_become_gray_or_bgr():
    """Mono10/12/16 are scaled to 8 bit; each Bayer tile is demosaiced to the right colour (GenICam names the tile
    from its top-left pixel, OpenCV from the second row and column)."""
    mono = np.array([[0, 1023], [512, 4]], "<u2")
    assert to_image(mono.tobytes(), 2, 2, "Mono10").tolist() == [[0, 255], [128, 1]]
    assert to_image((mono * 64).tobytes(), 2, 2, "Mono16").tolist() == [[0, 255], [128, 1]]
    b, g, r = 30, 120, 220
    for fmt, tile in (("BayerRG8", "RGGB"), ("BayerBG8", "BGGR"), ("BayerGR8", "GRBG"), ("BayerGB8", "GBRG")):
        mosaic = np.zeros((8, 8), np.uint8)
        for k, ch in enumerate(tile):
            mosaic[k // 2::2, k % 2::2] = {"R": r, "G": g, "B": b}[ch]
        out = to_image(mosaic.tobytes(), 8, 8, fmt)
        assert np.abs(out[3:5, 3:5].reshape(-1, 3).mean(0) - [b, g, r]).max() < 2, fmt
    assert set(BAYER) == {"BayerRG8", "BayerBG8", "BayerGR8", "BayerGB8"}
    rgb = np.array([[[1, 2, 3]]], np.uint8)
    assert to_image(rgb.tobytes(), 1, 1, "RGB8").tolist() == [[[3, 2, 1]]]
    assert cv2.countNonZero(to_image(bytes(4), 2, 2, "Mono8")) == 0


def test_a_camera_is_found_by_serial_id_address_or_its_stored_name(monkeypatch):
    """The emulator has no DeviceUserID, so the name lookup runs on two listed cameras with names stored."""
    from inspection.deploy.line import genicam

    cams = [{"id": "Basler-acA1300-21845123", "serial": "21845123", "address": "192.168.10.20"},
            {"id": "Basler-acA1300-21845124", "serial": "21845124", "address": "192.168.11.20"}]
    names = {"Basler-acA1300-21845123": "inlet", "Basler-acA1300-21845124": "outlet"}
    monkeypatch.setattr(genicam, "list_cameras", lambda: cams)
    monkeypatch.setattr(genicam, "_user_id", names.get)

    def found(device: str) -> str:
        cfg = load_station(None, ["source.kind=genicam", f"source.genicam.device={device}"]).source
        return genicam.GenICamSource(cfg)._find()[0]
    assert found("21845124") == found("192.168.11.20") == found("outlet") == "Basler-acA1300-21845124"
    assert found("Basler-acA1300-21845123") == found("") == "Basler-acA1300-21845123"  # "" = the first found
    with pytest.raises(genicam.SourceError, match="'press': no such camera found .*21845123.*21845124"):
        found("press")


def test_a_frame_is_stamped_when_it_arrived_so_its_wait_in_the_buffers_counts(camera):
    """A reader that falls behind finds the camera's frames waiting in the buffers: each is stamped with the time
    it arrived (Aravis' system timestamp), so capture → verdict latency counts that wait."""
    from inspection.deploy.line.genicam import GenICamSource

    camera("TEST01")
    src = GenICamSource(load_station(None, ["source.kind=genicam", "source.genicam.device=TEST01",
                                            "source.genicam.features={AcquisitionFrameRate: 50}"]).source)
    src.open()
    try:
        src.read()
        fresh = src.read()
        assert 0 <= time.time() - fresh.ts < 0.05
        time.sleep(0.4)  # 20 frames sent meanwhile; the buffers keep the first of them
        late = src.read()
        assert time.time() - late.ts > 0.1
        after = [src.read() for _ in range(3)]
        assert late.ts < after[0].ts < after[1].ts < after[2].ts <= time.time()
    finally:
        src.close()
