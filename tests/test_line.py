"""The line runner with real parts: a mosquitto broker, SQLite, kill -9, a vanishing camera, a full disk."""
import errno
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import always_fail

from inspection.cli import main
from inspection.deploy.line.frames import SourceError
from inspection.deploy.line.runner import LineRunner
from inspection.deploy.line.station import StationConfigError, load_station
from inspection.deploy.runtime import Runtime
from inspection.deploy.store.schema import FailureRecord, StoreFull
from inspection.deploy.store.sql import SQLiteStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _station(tmp_path, package, source, **sets):
    values = {"package": str(package), "source.path": str(source), "jsonl": str(tmp_path / "verdicts.jsonl"),
              "log.folder": str(tmp_path / "log"), "reload_s": 0, "log.fsync": False, "source.kind": "folder"}
    values.update(sets)
    return load_station(None, [f"{k}={v}" for k, v in values.items()])


def _lines(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]


def _check_log(folder: Path) -> int:
    """Every record's files exist and decode; (after recovery) every file belongs to a record."""
    store = SQLiteStore(folder / "failures.db", folder, fsync=False)
    records = store.records(limit=10**6)
    named = set()
    for r in records:  # before recovery: no record points at a missing or partial file
        for rel in r.files.values():
            path = folder / rel
            assert path.is_file(), f"record {r.id} names missing {rel}"
            data = np.fromfile(path, np.uint8)
            assert cv2.imdecode(data, cv2.IMREAD_UNCHANGED) is not None, f"{rel} is not a complete image"
            named.add(path.resolve())
    store.recover()  # what the runner does when it starts again
    files = {p.resolve() for p in folder.rglob("*")  # the database and the verdict journals (records, no images:
             if p.is_file() and not p.name.startswith(("failures.db", "journal."))}  # journal.jsonl, ….replay)
    assert files == named, f"files without a record: {sorted(map(str, files - named))[:5]}"
    store.close()
    return len(records)


def _mosquitto(port: int, *args: str) -> subprocess.Popen:
    """A real mosquitto on `port` (its arguments after the executable), once it accepts connections."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        pytest.fail("mosquitto is not installed: .ci/run installs it (apt-get install mosquitto)")
    proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def broker():
    port = _free_port()
    proc = _mosquitto(port, "-p", str(port))
    yield port
    proc.terminate()
    proc.wait(5)


def _subscribe(port: int, topic: str) -> tuple[list, object]:
    import paho.mqtt.client as mqtt

    got, ready = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{time.time()}")
    client.on_connect = lambda c, *a: (c.subscribe(topic, qos=1), ready.set())
    client.on_message = lambda c, u, msg: got.append(json.loads(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(5), "subscriber could not connect to mosquitto"
    time.sleep(0.2)
    return got, client


def test_replayed_set_logs_exactly_the_failed_parts_and_mqtt_gets_every_verdict(exported, broker, tmp_path):
    root = Path(exported["manifest"].root)
    got, sub = _subscribe(broker, "inspection/+/verdict")
    cfg = _station(tmp_path, exported["package"], root, **{"mqtt.host": "127.0.0.1", "mqtt.port": broker,
                                                           "station": "line-a", "queue.policy": "block",
                                                           "source.kind": "simulated"})
    summary = LineRunner(cfg).run()
    lines = _lines(tmp_path)
    parts = [p for p in root.rglob("*") if p.suffix in (".png", ".jpg") and p.relative_to(root).parts[0] != "masks"]
    assert summary["frames_total"] == len(lines) == len(parts)
    assert {x["part_id"] for x in lines} == {p.stem for p in parts}
    deadline = time.time() + 5
    while len({m["part_id"] for m in got}) < len(lines) and time.time() < deadline:
        time.sleep(0.05)
    sub.loop_stop()
    assert {m["part_id"] for m in got} == {x["part_id"] for x in lines}
    assert all(m["station"] == "line-a" for m in got)
    flagged = {x["part_id"] for x in lines if x["verdict"] in ("fail", "review", "error")}
    store = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
    records = store.records(limit=10**6)
    assert {r.part_id for r in records} == flagged and len(records) == len(flagged) > 0
    for r in records[:10]:
        image = cv2.imread(str(store.path(r, "image")), cv2.IMREAD_UNCHANGED)
        source = next(p for p in parts if p.stem == r.part_id)
        assert image.shape[:2] == cv2.imread(str(source), cv2.IMREAD_UNCHANGED).shape[:2]
        att = cv2.imread(str(store.path(r, "map")), cv2.IMREAD_UNCHANGED)
        assert att.dtype == np.uint16 and list(att.shape) == load_package_size(exported["package"])
        assert set(r.files) == {"image", "map"}  # no overlay: the review station draws it from these
    assert _check_log(tmp_path / "log") == len(flagged)


def test_a_broker_with_accounts_takes_verdicts_only_with_the_right_password(exported, tmp_path, monkeypatch):
    """mosquitto without anonymous access (the compose setup): the runner logs in with mqtt.username and the
    MQTT_PASSWORD environment variable; a wrong password publishes nothing and shows in the metrics."""
    import paho.mqtt.client as mqtt

    subprocess.run(["mosquitto_passwd", "-c", "-b", str(tmp_path / "passwd"), "station", "right-password"], check=True)
    port = _free_port()
    # as root, `user` keeps mosquitto running as us
    (tmp_path / "broker.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                                          f"password_file {tmp_path / 'passwd'}\nuser {getpass.getuser()}\n")
    proc = _mosquitto(port, "-c", str(tmp_path / "broker.conf"))
    try:
        got = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="qa")
        sub.username_pw_set("station", "right-password")
        sub.on_connect = lambda c, *a: c.subscribe("inspection/+/verdict", qos=1)
        sub.on_message = lambda c, u, msg: got.append(json.loads(msg.payload))
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        time.sleep(0.3)
        for password, expect in (("wrong-password", 0), ("right-password", 5)):
            monkeypatch.setenv("MQTT_PASSWORD", password)
            cfg = _station(tmp_path / password, exported["package"], exported["manifest"].root, **{
                "mqtt.host": "127.0.0.1", "mqtt.port": port, "mqtt.username": "station", "station": password,
                "source.kind": "simulated", "source.limit": 5, "source.fps": 5, "queue.policy": "block"})
            runner = LineRunner(cfg)
            runner.run()
            time.sleep(0.5)
            assert sum(m["station"] == password for m in got) == expect, password
            assert (runner.metrics.get("mqtt_connect_refused_total") > 0) == (not expect)
        sub.loop_stop()
    finally:
        proc.terminate()
        proc.wait(5)


def load_package_size(package):
    return json.loads((Path(package) / "metadata.json").read_text())["attention"]["size"]


def _always_fail(exported, tmp_path) -> Path:
    return always_fail(exported["package"], tmp_path / "pkg-fail")


def _write_yaml(path: Path, cfg_values: dict) -> Path:
    import yaml
    path.write_text(yaml.safe_dump(cfg_values))
    return path


def test_kill_9_never_leaves_a_record_without_files_or_a_file_without_record(exported, tmp_path):
    pkg = _always_fail(exported, tmp_path)  # every part fails: the writer is busy all the time
    station = _write_yaml(tmp_path / "station.yaml", {
        "package": str(pkg), "jsonl": "", "reload_s": 0,
        "source": {"kind": "simulated", "path": str(exported["manifest"].root), "loop": True, "fps": 200},
        "log": {"folder": str(tmp_path / "log"), "fsync": True}})
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "inspection.cli", "run", "--station", str(station)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        db = tmp_path / "log" / "failures.db"
        before = counts[-1] if counts else 0
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None and _count(db) <= before:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.6)))
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts.append(_check_log(tmp_path / "log"))
    assert counts == sorted(counts) and counts[-1] > counts[0] > 0


def _count(db: Path) -> int:
    import sqlite3
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("SELECT COUNT(*) FROM failures").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def _video(path: Path, n: int = 8) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 80))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    for i in range(n):
        frame = np.full((80, 96, 3), 40 + 20 * i, np.uint8)
        writer.write(frame)
    writer.release()
    return path


def test_camera_that_disconnects_is_resumed(exported, tmp_path, caplog):
    caplog.set_level("WARNING", logger="inspection.line")
    video = _video(tmp_path / "cam.avi")
    cfg = _station(tmp_path, exported["package"], video, **{"source.kind": "camera", "source.limit": 14,
                                                             "source.reconnect_max_s": 0.4})
    runner = LineRunner(cfg)
    runner.self_check()
    hidden = tmp_path / "unplugged.avi"
    os.replace(video, hidden)  # the open capture keeps streaming; reconnects fail until it is back
    thread = threading.Thread(target=runner.run)
    thread.start()
    states = []
    deadline = time.time() + 10
    while runner.metrics.get("source_reconnects_total") < 3 and time.time() < deadline:
        states.append(runner.health()["source"])
        time.sleep(0.02)
    assert "reconnecting" in states and runner.health()["status"] == "down"
    os.replace(hidden, video)  # plugged back in
    thread.join(20)
    assert not thread.is_alive()
    s = runner.summary()
    assert s["frames_total"] == 14 and s["source_reconnects_total"] >= 3
    assert len(_lines(tmp_path)) == 14
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]  # the journal names the station
    assert retries and all(r.station == cfg.station and f"[{cfg.station}]" in r.getMessage() for r in retries)


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs (a real full disk); where mounting is not allowed, writes fail with ENOSPC instead."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    yield mnt, r.returncode == 0
    if r.returncode == 0:
        subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_keeps_verdicts_flowing_and_raises_the_alarm(exported, tmp_path, small_disk, monkeypatch):
    mnt, real = small_disk
    pkg = _always_fail(exported, tmp_path)
    filler = mnt / "filler.bin"
    if real:  # leave ~200 KB: a few records fit, then the disk is full
        filler.write_bytes(b"\0" * (8 * 2**20 - 200 * 2**10))
        st = os.statvfs(mnt)
        assert st.f_bavail * st.f_frsize < 300 * 2**10, "the tmpfs was not filled"
    else:
        import inspection.deploy.store.sql as store_module
        real_write = store_module.write_atomic
        state = {"full": False, "n": 0}

        def write(path, data, fsync=True):
            state["n"] += 1
            if state["n"] > 6 and state["full"] is not None:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(path, data, fsync)
        monkeypatch.setattr(store_module, "write_atomic", write)
    cfg = _station(tmp_path, pkg, exported["manifest"].root, **{
        "source.kind": "simulated", "source.fps": 40, "source.limit": 80, "source.loop": True,
        "log.folder": str(mnt / "log"), "log.retry_s": 0.2, "log.queue": 500})
    runner = LineRunner(cfg)
    thread = threading.Thread(target=runner.run)
    thread.start()
    deadline = time.time() + 20
    while not runner.metrics.get("log_disk_full") and time.time() < deadline:
        time.sleep(0.02)
    assert runner.metrics.get("log_disk_full") == 1, "the full disk raised no alarm"
    assert runner.health()["status"] == "degraded"
    frames_at_alarm = runner.metrics.get("frames_total")
    time.sleep(0.5)
    assert runner.metrics.get("frames_total") > frames_at_alarm  # verdicts keep flowing
    if real:
        filler.unlink()  # space comes back
    else:
        state["full"] = None
    thread.join(30)
    s = runner.summary()
    assert s["frames_total"] == 80 and len(_lines(tmp_path)) == 80
    assert s["log_records_lost_total"] == 0 and runner.metrics.get("log_disk_full") == 0
    assert _check_log(mnt / "log") == s["log_records_total"] == 80


def test_hot_reload_switches_model_between_batches_without_losing_a_frame(exported, tmp_path):
    a = tmp_path / "models" / "a"
    shutil.copytree(exported["package"], a)
    pointer = tmp_path / "models" / "current"
    pointer.write_text("a")
    cfg = _station(tmp_path, pointer, exported["manifest"].root, **{
        "source.kind": "simulated", "source.fps": 40, "source.limit": 80, "source.loop": True, "reload_s": 0.1})
    runner = LineRunner(cfg)
    thread = threading.Thread(target=runner.run)
    thread.start()
    while runner.metrics.get("frames_total") < 15:
        time.sleep(0.02)
    b = tmp_path / "models" / "b"
    shutil.copytree(a, b)
    meta = json.loads((b / "metadata.json").read_text())
    meta["model_version"] = "b-version"
    (b / "metadata.json").write_text(json.dumps(meta))
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text("b")
    os.replace(tmp, pointer)  # promotion: an atomic pointer switch
    thread.join(30)
    lines = _lines(tmp_path)
    assert [x["part_id"] for x in lines] == [f"sim-{i:08d}" for i in range(1, 81)]
    versions = [x["model_version"] for x in lines]
    switch = versions.index("b-version")
    assert 15 <= switch < 80 and set(versions[:switch]) == {meta_version(a)} and set(versions[switch:]) == {"b-version"}
    assert runner.summary()["model_reloads_total"] == 1


def meta_version(pkg):
    return json.loads((Path(pkg) / "metadata.json").read_text())["model_version"]


def test_a_broken_new_package_is_refused_and_the_old_model_keeps_running(exported, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(exported["package"], pkg)
    cfg = _station(tmp_path, pkg, exported["manifest"].root, **{
        "source.kind": "simulated", "source.fps": 40, "source.limit": 40, "reload_s": 0.1})
    runner = LineRunner(cfg)
    thread = threading.Thread(target=runner.run)
    thread.start()
    time.sleep(0.3)
    meta = json.loads((pkg / "metadata.json").read_text())
    meta["format_version"] = 99
    (pkg / "metadata.json").write_text(json.dumps(meta))
    thread.join(30)
    assert runner.metrics.get("model_reload_failures_total") == 1
    assert len(_lines(tmp_path)) == 40 and {x["model_version"] for x in _lines(tmp_path)} == {meta_version(
        exported["package"])}


def test_http_health_and_prometheus_metrics(exported, tmp_path):
    port = _free_port()
    cfg = _station(tmp_path, exported["package"], exported["manifest"].root, **{
        "source.kind": "simulated", "source.loop": True, "source.fps": 20, "http.port": port,
        "station": 'line-h"} injected_metric 1'})  # a hostile station name is a label value, nothing more
    runner = LineRunner(cfg)
    runner.self_check()
    thread = threading.Thread(target=runner.run)
    thread.start()
    while runner.metrics.get("frames_total") < 10:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    health = json.loads(urllib.request.urlopen(base + "/health").read())
    assert health["status"] == "ok" and health["frames"] >= 10 and health["station"] == 'line-h"} injected_metric 1'
    assert health["model_version"] == runner.runtime.version and health["source"] == "connected"
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    label = re.escape('station="line-h\\"} injected_metric 1"')
    frames = int(re.search(label.join([r'inspection_frames_total\{', r'\} (\d+)']), text).group(1))
    latencies = int(re.search(label.join([r'inspection_latency_seconds_count\{', r'\} (\d+)']), text).group(1))
    assert all(re.fullmatch(r'(# TYPE \w+ \w+|\w+\{(\w+="([^"\\]|\\.)*",?)+\} \S+)', x) for x in text.splitlines())
    assert frames >= 10 and latencies >= 10 and 'le="+Inf"' in text
    assert f'version="{runner.runtime.version}"' in text and "inspection_queue_depth" in text
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/nope")
    assert err.value.code == 404
    # 300 clients that send half a request and wait: threads stay bounded and /health still answers at once
    threads_before = threading.active_count()
    hanging = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        hanging.append(sock)
    time.sleep(0.5)
    assert threading.active_count() - threads_before <= 20, threading.active_count() - threads_before
    for sock in hanging:
        sock.close()
    t = time.perf_counter()
    deadline = t + 3
    while True:  # the slots free as the half-open sockets close
        try:
            assert urllib.request.urlopen(base + "/health", timeout=1).status in (200, 503)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert time.perf_counter() < deadline, "health did not come back after the clients left"
    assert time.perf_counter() - t < 1.5
    runner.stop()
    thread.join(30)
    with pytest.raises(OSError):  # the runner returned: its port is closed, not left listening
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_corrupt_and_wrong_frames_get_an_error_verdict_never_a_pass(exported, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    good = next(Path(exported["manifest"].root, "good").iterdir())
    shutil.copy(good, folder / "a_ok.png")
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (folder / "c_empty.jpg").write_bytes(b"")
    cv2.imwrite(str(folder / "d_tiny.png"), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(folder / "e_wide.png"), np.zeros((30, 600, 3), np.uint8))
    s = LineRunner(_station(tmp_path, exported["package"], folder)).run()
    lines = {x["part_id"]: x for x in _lines(tmp_path)}
    assert lines["a_ok"]["verdict"] in ("pass", "review", "fail")
    for part, message in [("b_corrupt", "not a readable image"), ("c_empty", "not a readable image"),
                          ("d_tiny", "at least 8x8"), ("e_wide", "aspect")]:
        assert lines[part]["verdict"] == "error" and message in lines[part]["error"], lines[part]
    assert s["frames_error_total"] == 4
    store = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
    errors = {r.part_id: r for r in store.records(verdict="error")}
    assert set(errors) == {"b_corrupt", "c_empty", "d_tiny", "e_wide"}
    assert "image" in errors["e_wide"].files and "image" not in errors["b_corrupt"].files


def test_station_roi_crops_before_the_model_and_boxes_come_back_in_frame_pixels(exported, tmp_path):
    pkg = _always_fail(exported, tmp_path)
    meta = json.loads((pkg / "metadata.json").read_text())
    meta["variants"]["fp32"].update(box_threshold=0.0, box_rule={})  # every pixel boxed: the box is the crop
    (pkg / "metadata.json").write_text(json.dumps(meta))
    folder = tmp_path / "frames"
    folder.mkdir()
    frame = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "big.png"), frame)
    cv2.imwrite(str(folder / "small.png"), np.full((100, 100, 3), 128, np.uint8))
    LineRunner(_station(tmp_path, pkg, folder, **{"source.roi": "[100, 50, 120, 110]"})).run()
    lines = {x["part_id"]: x for x in _lines(tmp_path)}
    box = lines["big"]["boxes"][0]
    assert (box["x0"], box["y0"], box["x1"], box["y1"]) == (100, 50, 220, 160)
    assert lines["small"]["verdict"] == "error" and "station ROI" in lines["small"]["error"]
    # the failure log keeps what the model judged, so review, re-score, export and retrain see the same image
    store = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
    (rec,) = store.records(part_id="big")
    crop = frame[50:160, 100:220]
    assert rec.crop == [100, 50, 120, 110] and np.array_equal(cv2.imread(str(store.path(rec, "image"))), crop)
    assert (rec.boxes[0]["x0"], rec.boxes[0]["y0"], rec.boxes[0]["x1"], rec.boxes[0]["y1"]) == (0, 0, 120, 110)
    model_map = cv2.imread(str(store.path(rec, "map")), cv2.IMREAD_UNCHANGED).astype(np.float32) / 65535
    rt = Runtime(pkg, backend="cpu")
    again = rt.inspect([crop], color="BGR")[0]
    assert abs(again.score - rec.score) < 1e-3  # the logged score, from the stored image
    rescored = rt.rescore(crop, model_map, color="BGR")  # the perception branch reads the stored map as the line's
    assert rescored["probs"] == pytest.approx(again.probs, abs=1e-3)
    store.add_review(rec.id, "qa", "defect", "hole", corrected=np.ones(crop.shape[:2], np.float32))  # crop-sized
    from inspection.deploy.store.to_dataset import export_reviewed

    export_reviewed(store, tmp_path / "reviewed")  # what the nightly retrain trains on
    (image,) = (tmp_path / "reviewed" / "defect").rglob("*.png")
    (target,) = (tmp_path / "reviewed" / "corrected").rglob("*.png")
    assert np.array_equal(cv2.imread(str(image)), crop) and cv2.imread(str(target)).shape[:2] == crop.shape[:2]


@pytest.mark.parametrize("policy", ["drop_oldest", "block"])
def test_queue_policy_is_explicit(exported, tmp_path, policy):
    cfg = _station(tmp_path, exported["package"], exported["manifest"].root, **{
        "source.kind": "simulated", "source.limit": 60, "queue.size": 2, "batch.max_size": 1,
        "queue.policy": policy})
    s = LineRunner(cfg).run()
    if policy == "block":
        assert s["frames_total"] == 60 and s["frames_dropped_total"] == 0
    else:
        assert s["frames_total"] + s["frames_dropped_total"] == 60 and s["frames_dropped_total"] > 0


def test_sigterm_drains_and_exits_cleanly(exported, tmp_path):
    station = _write_yaml(tmp_path / "station.yaml", {
        "package": str(exported["package"]), "jsonl": str(tmp_path / "verdicts.jsonl"), "reload_s": 0,
        "source": {"kind": "simulated", "path": str(exported["manifest"].root), "loop": True, "fps": 50},
        "log": {"folder": str(tmp_path / "log"), "fsync": False}})
    proc = subprocess.Popen([sys.executable, "-m", "inspection.cli", "run", "--station", str(station)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and (not (tmp_path / "verdicts.jsonl").exists()
                                      or len(_lines(tmp_path)) < 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    lines = _lines(tmp_path)
    assert summary["frames_total"] == len(lines) >= 20
    flagged = sum(x["verdict"] != "pass" for x in lines)
    assert summary["log_records_total"] == flagged == _check_log(tmp_path / "log")


def test_startup_errors_name_what_is_wrong(exported, tmp_path, capsys):
    assert main(["run", "--set", f"package={exported['package']}", "--set", "source.kind=folder",
                 "--set", f"source.path={tmp_path / 'nowhere'}", "--set", f"log.folder={tmp_path / 'log'}"]) == 2
    assert "image folder not found" in capsys.readouterr().err
    with pytest.raises(SourceError, match="cannot open the camera"):
        LineRunner(_station(tmp_path, exported["package"], "rtsp://127.0.0.1:1/none",
                            **{"source.kind": "camera"})).self_check()
    for sets, message in [(["queue.policy=fifo"], "queue.policy must be one of"),
                          (["source.fps=fast"], "source.fps must be float"),
                          (["sorce.kind=folder"], "unknown field"),
                          (["source.roi=[1, 2, 3]"], "source.roi"),
                          (["batch.max_size=0"], "batch.max_size must be at least 1"),
                          (["log.writer_nice=25"], "log.writer_nice must be 0-19")]:
        with pytest.raises(StationConfigError, match=message):
            load_station(None, sets)
    (tmp_path / "bad.yaml").write_text("source: [1, 2\n")
    assert main(["run", "--station", str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", "--set", f"package={tmp_path / 'nopackage'}"]) == 2
    assert "model package folder not found" in capsys.readouterr().err


def test_quota_deletes_oldest_reviewed_records_and_never_unreviewed_ones(tmp_path):
    store = SQLiteStore(tmp_path / "f.db", tmp_path / "f", quota_bytes=3000, fsync=False)
    ids = []
    for i in range(3):
        rec = FailureRecord(f"p{i}", "s", 1000.0 + i, "v", "fail", 0.9, "scratch", [])
        ids.append(store.add(rec, {"image": (".bin", b"x" * 1000)}))
    with pytest.raises(StoreFull, match="unreviewed"):
        store.add(FailureRecord("p3", "s", 1003.0, "v", "fail", 0.9, None, []), {"image": (".bin", b"x" * 1000)})
    store.set_review_status(ids[1], "confirmed")
    store.set_review_status(ids[0], "false_alarm")
    store.add(FailureRecord("p4", "s", 1004.0, "v", "fail", 0.9, None, []), {"image": (".bin", b"x" * 1000)})
    assert [r.part_id for r in store.records()] == ["p4", "p2", "p1"]  # the oldest reviewed one (p0) went
    assert store.used_bytes() == 3000 and len(list((tmp_path / "f").rglob("*.bin"))) == 3


def test_watched_folder_judges_each_new_file_once_when_it_is_complete(exported, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = _station(tmp_path, exported["package"], inbox, **{"source.kind": "watch", "source.limit": 3,
                                                            "source.settle_ms": 800})
    runner = LineRunner(cfg)
    thread = threading.Thread(target=runner.run)
    thread.start()
    good = sorted(Path(exported["manifest"].root, "good").glob("*.png"))[:3]
    shutil.copy(good[0], inbox / "part1.png")
    data = good[1].read_bytes()
    with open(inbox / "part2.png", "wb") as f:  # a slow writer: half now, half later
        f.write(data[:len(data) // 2])
        f.flush()
        time.sleep(0.25)  # shorter than settle_ms: the file is not read half-written
        f.write(data[len(data) // 2:])
    shutil.copy(good[2], inbox / ".part3.png.tmp")  # the usual temp-then-rename drop: ignored until renamed
    time.sleep(0.3)
    os.replace(inbox / ".part3.png.tmp", inbox / "part3.png")
    thread.join(20)
    lines = _lines(tmp_path)
    assert [x["part_id"] for x in lines] == ["part1", "part2", "part3"]
    assert all(x["verdict"] != "error" for x in lines), lines  # part2 was not read half-written


def test_video_file_source_reads_every_frame_once(exported, tmp_path):
    video = _video(tmp_path / "line.avi", n=8)
    s = LineRunner(_station(tmp_path, exported["package"], video, **{"source.kind": "video"})).run()
    assert s["frames_total"] == 8 and [x["part_id"] for x in _lines(tmp_path)] == [f"{i:08d}" for i in range(1, 9)]


def test_recovery_removes_only_the_stores_own_leftovers(tmp_path):
    store = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
    rid = store.add(FailureRecord("p1", "s1", time.time(), "v", "fail", 0.9, None, []), {"image": (".bin", b"x")})
    kept = store.path(store.get(rid), "image")
    store.close()
    day = kept.parent
    (day / "p2-abc-image.png").write_bytes(b"orphan")  # renamed in, but the commit never happened
    (day / ".p3-def-image.png.tmp-123").write_bytes(b"half")
    (tmp_path / "log" / "notes.txt").write_text("an operator's file")
    store = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
    assert store.recovered == {} and len(list(day.iterdir())) == 3  # a reader deletes nothing
    assert store.recover("other-station") == {"temporary": 0, "orphans": 0}
    assert store.recover("s1") == {"temporary": 1, "orphans": 1}
    assert sorted(p.name for p in day.iterdir()) == [kept.name]
    assert (tmp_path / "log" / "notes.txt").exists()


def test_the_documented_station_file_holds_exactly_the_defaults():
    path = Path(__file__).resolve().parent.parent / "configs" / "station.yaml"
    assert load_station(path) == load_station(None)


def test_the_documented_station_file_names_every_key():
    """configs/station.yaml says it holds every key: each field of the schema is written out (a key left out
    would still load, with its default, so equality of the loaded configs alone cannot tell)."""
    import dataclasses

    import yaml

    from inspection.deploy.line.station import StationConfig

    def keys(node, prefix=""):
        out = set()
        for name, value in node.items():
            nested = isinstance(value, dict) and value and name != "features"  # genicam.features: a free mapping
            out |= keys(value, f"{prefix}{name}.") if nested else {prefix + name}
        return out

    path = Path(__file__).resolve().parent.parent / "configs" / "station.yaml"
    assert keys(yaml.safe_load(path.read_text())) == keys(dataclasses.asdict(StationConfig()))


def test_an_absent_broker_never_stops_the_line(exported, tmp_path):
    cfg = _station(tmp_path, exported["package"], exported["manifest"].root, **{
        "source.kind": "simulated", "source.limit": 20, "mqtt.host": "127.0.0.1", "mqtt.port": _free_port()})
    start = time.time()
    s = LineRunner(cfg).run()
    assert s["frames_total"] == 20 and len(_lines(tmp_path)) == 20
    assert time.time() - start < 20  # shutdown waits a bounded time for unsent messages


def test_part_ids_come_from_the_line_controllers_trigger(exported, broker, tmp_path):
    import paho.mqtt.client as mqtt

    cfg = _station(tmp_path, exported["package"], exported["manifest"].root, **{
        "source.kind": "simulated", "source.limit": 6, "source.fps": 20, "source.part_id": "trigger",
        "source.trigger_wait_ms": 300, "mqtt.host": "127.0.0.1", "mqtt.port": broker, "station": "line-t"})
    runner = LineRunner(cfg)
    deadline = time.time() + 5
    while not runner.metrics.get("mqtt_connected") and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # subscription settles
    plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc")
    plc.connect("127.0.0.1", broker)
    plc.loop_start()
    for i in range(1, 6):  # five parts announced; the sixth frame comes without one
        plc.publish("inspection/line-t/trigger", json.dumps({"part_id": f"P-{i:03d}"}) if i % 2 else f"P-{i:03d}",
                    qos=1).wait_for_publish(2)
    plc.loop_stop()
    time.sleep(0.2)
    s = runner.run()
    ids = [x["part_id"] for x in _lines(tmp_path)]
    assert ids == ["P-001", "P-002", "P-003", "P-004", "P-005", "untriggered-00000006"]
    assert runner.metrics.get("frames_untriggered_total") == 1 and s["frames_total"] == 6
    with pytest.raises(StationConfigError, match="set mqtt.host"):
        load_station(None, ["source.part_id=trigger"])


def test_a_failing_batch_gives_error_verdicts_and_the_line_goes_on(exported, tmp_path):
    cfg = _station(tmp_path, exported["package"], exported["manifest"].root, **{
        "source.kind": "simulated", "source.limit": 24, "batch.max_size": 4, "queue.policy": "block"})
    runner = LineRunner(cfg)
    real, calls = runner.runtime.session.run, []

    def flaky(names, feeds):  # the inference engine fails on the second batch
        calls.append(len(feeds["image"]))
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(names, feeds)
    runner.runtime.session = type("Flaky", (), {"run": staticmethod(flaky)})()
    s = runner.run()
    lines = _lines(tmp_path)
    errors = [x for x in lines if x["verdict"] == "error"]
    assert s["frames_total"] == len(lines) == 24 and len(errors) == calls[1]
    assert all("illegal memory access" in x["error"] for x in errors)
    assert runner.metrics.get("inference_errors_total") == 1


def test_health_answers_within_a_second_while_slow_clients_trickle_their_requests(exported, tmp_path):
    """16 sockets each sending one byte every 3 s (each byte used to reset the socket's timeout, so they held
    every slot for as long as they liked): /health answers within 1 s throughout."""
    port = _free_port()
    cfg = _station(tmp_path, exported["package"], exported["manifest"].root, **{
        "source.kind": "simulated", "source.loop": True, "source.fps": 20, "http.port": port})
    runner = LineRunner(cfg)
    runner.self_check()
    thread = threading.Thread(target=runner.run)
    thread.start()
    stop, slow = threading.Event(), []

    def trickle():
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        i = 0
        while not stop.is_set() and i < len(request):
            for k, sock in enumerate(socks):
                try:
                    sock.sendall(request[i:i + 1])
                except OSError:  # cut by the server: come back, as an attacker would
                    socks[k] = socket.create_connection(("127.0.0.1", port))
            i += 1
            stop.wait(3)
        for sock in socks:
            sock.close()

    attacker = threading.Thread(target=trickle)
    attacker.start()
    time.sleep(0.5)
    waits, t_end = [], time.time() + 12
    while time.time() < t_end:
        t = time.perf_counter()
        try:
            status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            status = repr(exc)
        waits.append(time.perf_counter() - t)
        slow.append(status)
        time.sleep(0.2)
    stop.set()
    attacker.join(10)
    runner.stop()
    thread.join(30)
    assert all(s in (200, 503) for s in slow), [s for s in slow if s not in (200, 503)][:3]
    assert max(waits) < 1.0 and len(waits) >= 30


def test_every_announced_failure_has_a_record_after_repeated_kill_9(exported, tmp_path):
    """Five SIGKILLs of `inspection run` while every part fails (the writer behind, its queue full of parts
    already announced on the JSON lines): after a clean start every announced fail/review/error verdict has a
    record, the ones whose images were lost in the kill marked so."""
    import sqlite3

    from inspection.deploy.line.failure_log import IMAGE_LOST

    pkg = _always_fail(exported, tmp_path)
    jsonl = tmp_path / "verdicts.jsonl"
    station = _write_yaml(tmp_path / "station.yaml", {
        "package": str(pkg), "jsonl": str(jsonl), "reload_s": 0, "station": "k9",
        "source": {"kind": "simulated", "path": str(exported["manifest"].root), "loop": True, "fps": 300},
        "log": {"folder": str(tmp_path / "log"), "fsync": True, "verdicts": ["fail", "review", "error"]}})
    rng = np.random.default_rng(1)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "inspection.cli", "run", "--station", str(station)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline, size = time.time() + 60, jsonl.stat().st_size if jsonl.exists() else 0
        while time.time() < deadline and proc.poll() is None and (not jsonl.exists() or jsonl.stat().st_size <= size):
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.5, 1.5)))
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run = subprocess.run([sys.executable, "-m", "inspection.cli", "run", "--station", str(station), "--set",
                          "source.limit=1", "--set", "source.loop=false"], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    announced = set()
    for line in jsonl.read_text().splitlines():
        try:
            x = json.loads(line)
        except ValueError:
            continue  # a line the kill cut short was never fully announced
        if x["verdict"] in ("fail", "review", "error"):
            announced.add((x["part_id"], x["ts"]))
    con = sqlite3.connect(tmp_path / "log" / "failures.db")
    rows = con.execute("SELECT part_id, ts, boxes FROM failures").fetchall()
    logged = {(p, round(t, 3)) for p, t, _ in rows}
    lost = sum(IMAGE_LOST in b for _, _, b in rows)
    print(f"announced {len(announced)}, logged {len(logged)}, images lost {lost}")
    assert len(announced) > 100 and announced <= logged


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is read from Linux's /proc")
def test_the_failure_log_writer_runs_at_a_lower_priority_than_judging(tmp_path):
    """log.writer_nice: the writer thread (image encoding) yields the CPU to the judging thread; 0 leaves it."""
    import logging

    from inspection.deploy.line.failure_log import FailureLogWriter
    from inspection.deploy.line.prometheus import Metrics

    def niceness(tid: int) -> int:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of proc(5), counted after the command name

    mine = niceness(threading.get_native_id())
    for nice, expected in ((7, min(19, mine + 7)), (0, mine)):
        cfg = load_station(None, [f"log.folder={tmp_path / str(nice)}", f"log.writer_nice={nice}"])
        writer = FailureLogWriter(cfg, SQLiteStore(tmp_path / f"{nice}.db", tmp_path / str(nice)), Metrics(),
                                  logging.getLogger("test"))
        writer.start()
        try:
            deadline = time.time() + 5
            while niceness(writer.thread.native_id) != expected and time.time() < deadline:
                time.sleep(0.01)
            assert niceness(writer.thread.native_id) == expected
            assert niceness(threading.get_native_id()) == mine  # the caller (judging) keeps its priority
        finally:
            writer.close()


def test_a_paced_simulated_camera_stamps_each_frame_when_it_is_taken(tmp_path):
    """source.fps: a frame is taken every 1/fps from the first read; a reader that falls behind finds the frames
    it missed stamped with the time they were taken, so their wait counts in capture → verdict latency."""
    from inspection.deploy.line.sources import SimulatedCamera

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((16, 16, 3), 40 * i, np.uint8))
    cam = SimulatedCamera(str(tmp_path), fps=50, loop=True)
    cam.open()
    time.sleep(0.2)  # between opening and the first read no frame is due
    before = time.time()
    first = cam.read()
    assert before <= first.ts <= time.time()
    second = cam.read()
    assert second.ts == pytest.approx(first.ts + 0.02, abs=1e-6) and second.ts <= time.time()
    time.sleep(0.1)  # the reader falls behind by five frames
    late = [cam.read() for _ in range(5)]
    assert [f.ts - first.ts for f in late] == pytest.approx([0.04, 0.06, 0.08, 0.10, 0.12], abs=1e-6)
    assert time.time() - late[0].ts > 0.05


def test_the_writer_writes_what_its_queue_holds_with_one_flush_and_one_transaction(exported, tmp_path, monkeypatch):
    """Parts queued while the writer was busy are written together: one flush of the disk for all their files
    and one transaction for all their records; every record has its image and map."""
    import logging

    import inspection.deploy.store.sql as sql
    from inspection.deploy.line.failure_log import WRITE_BATCH, FailureLogWriter
    from inspection.deploy.line.frames import Frame
    from inspection.deploy.line.prometheus import Metrics

    flushes, transactions = [], []
    flush = sql.flush_files
    monkeypatch.setattr(sql, "flush_files", lambda paths, folders=(): (flushes.append(len(paths)),
                                                                        flush(paths, folders)))
    pkg = _always_fail(exported, tmp_path)
    cfg = _station(tmp_path, pkg, exported["manifest"].root, **{"log.fsync": True, "station": "w"})
    store = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=True)
    begin = store._transaction
    monkeypatch.setattr(store, "_transaction", lambda: (transactions.append(1), begin())[1])
    writer = FailureLogWriter(cfg, store, Metrics(), logging.getLogger("test"))
    rt = Runtime(pkg, backend="cpu")
    paths = sorted(Path(exported["manifest"].root).rglob("*.png"))[:12]
    frames = [Frame(f"p{i}", cv2.imread(str(p)), time.time() + i) for i, p in enumerate(paths)]
    jobs = []
    for frame, result in zip(frames, rt.inspect([f.image for f in frames], "BGR")):
        frame.judged = frame.image
        jobs.append(writer.job(frame, result, None, None))
    assert len(jobs) == len(paths) == 12 <= WRITE_BATCH and all(j.result.verdict == "fail" for j in jobs)
    writer.journal(jobs)
    for job in jobs:
        writer.put(job)  # all queued before the writer starts: it takes them as one batch
    writer.start()
    writer.close()
    assert flushes == [2 * len(jobs)] and transactions == [1]
    records = store.records(limit=100)
    assert sorted(r.part_id for r in records) == sorted(f.part_id for f in frames)
    assert all(set(r.files) == {"image", "map"} and store.path(r, "image").stat().st_size > 0 for r in records)


def test_the_runner_keeps_numpys_blas_to_one_thread(exported, tmp_path):
    """The box rule's small matrix products run on one BLAS thread in the line process (a second one waits for a
    core that inference or the writer holds)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(2, user_api="blas"):
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {2}
        LineRunner(_station(tmp_path, exported["package"], exported["manifest"].root))
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and set(blas) == {1}


def test_a_failure_where_verdicts_are_announced_ends_the_run_with_its_error_never_a_stall(exported, tmp_path,
                                                                                          monkeypatch):
    """The model runs on the loop's thread and each batch's verdicts on a thread of their own: an error there (here
    the outputs) ends run() with that error, as when one thread did both, and never leaves the loop waiting."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, p in enumerate(sorted(Path(exported["manifest"].root, "good").iterdir())[:12]):
        shutil.copy(p, folder / f"p{i:02d}{p.suffix}")
    runner = LineRunner(_station(tmp_path, exported["package"], folder, **{"batch.max_size": 1}))
    emit, calls = runner.outputs.emit, []

    def emit_until_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("output device gone")
        return emit(*a, **k)
    monkeypatch.setattr(runner.outputs, "emit", emit_until_the_third)
    ended: dict = {}

    def run():
        try:
            ended["summary"] = runner.run()
        except OSError as exc:
            ended["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "run() stalled after the verdict thread failed"
    assert "output device gone" in str(ended.get("error")), ended
    assert len(calls) == 3 and len(_lines(tmp_path)) == 2  # nothing announced after the failure
