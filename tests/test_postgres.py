"""Many stations on one PostgreSQL database: real runner processes, a server restart mid-run, the review station."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import always_fail
from fastapi.testclient import TestClient

from inspection.deploy.line.runner import LineRunner
from inspection.deploy.line.station import load_station
from inspection.deploy.review.app import ReviewConfig, create_app
from inspection.deploy.store.factory import open_store

STATIONS = ("line-a", "line-b", "line-c")


def _sets(package, source, folder, db, station, jsonl, **more) -> list[str]:
    values = {"package": package, "source.kind": "simulated", "source.path": source, "log.folder": folder,
              "log.db": db, "station": station, "jsonl": jsonl, "reload_s": 0, "log.fsync": False,
              "queue.policy": "block", **more}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def shared_log(exported, postgres, tmp_path_factory):
    """Three `inspection run` processes at once, each a station, one database and one shared image folder."""
    tmp = tmp_path_factory.mktemp("pg-line")
    pkg = always_fail(exported["package"], tmp / "pkg")  # every part is logged: the writers are busy throughout
    db, folder = postgres.new_database(), tmp / "shared"
    procs = {}
    for station in STATIONS:
        args = [a for s in _sets(pkg, exported["manifest"].root, folder, db, station, tmp / f"{station}.jsonl")
                for a in ("--set", s)]
        procs[station] = subprocess.Popen([sys.executable, "-m", "inspection.cli", "run", *args],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for proc in procs.values():
            assert proc.wait(180) == 0, proc.stderr.read()[-3000:]
    finally:
        for proc in procs.values():
            proc.kill()
    verdicts = {s: [json.loads(x) for x in (tmp / f"{s}.jsonl").read_text().splitlines()] for s in STATIONS}
    return {"db": db, "folder": folder, "verdicts": verdicts, "package": exported["package"]}


def test_several_runner_processes_lose_no_record(shared_log):
    store = open_store(shared_log["db"], shared_log["folder"])
    images = len(shared_log["verdicts"]["line-a"])
    assert images > 40 and all(len(v) == images for v in shared_log["verdicts"].values())
    for station, verdicts in shared_log["verdicts"].items():
        records = store.records(limit=10**4, station=station)
        assert sorted(r.part_id for r in records) == sorted(v["part_id"] for v in verdicts), station
        for r in records:  # every record's files are there and decode
            for rel in r.files.values():
                assert cv2.imread(str(store.folder / rel), cv2.IMREAD_UNCHANGED) is not None, rel
    assert store.count() == 3 * images and store.stations() == list(STATIONS)
    today = {(r["station"]): r for r in store.daily(1)}
    assert all(today[s]["inspected"] == images and today[s]["logged"] == images for s in STATIONS)
    store.close()


def test_one_review_station_serves_every_station_on_the_database(shared_log, tmp_path):
    app = create_app(ReviewConfig(shared_log["folder"], Path(shared_log["package"]), tmp_path / "accounts.db",
                                  db=shared_log["db"]))
    app.state.review.accounts.add_user("lea", "lead-password", role="lead")
    client = TestClient(app)
    assert client.post("/login", data={"user": "lea", "password": "lead-password"},
                       follow_redirects=False).status_code == 303
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)
    parts = client.get("/api/parts", params={"station": "line-b", "limit": 5}).json()["parts"]
    assert len(parts) == 5 and {p["station"] for p in parts} == {"line-b"}
    part = parts[0]
    page = client.get(f"/parts/{part['id']}")
    assert page.status_code == 200 and part["part_id"] in page.text
    image = cv2.imdecode(np.frombuffer(client.get(f"/parts/{part['id']}/file/image").content, np.uint8),
                         cv2.IMREAD_UNCHANGED)
    erased = np.zeros(image.shape[:2], np.uint8)
    r = client.post(f"/api/parts/{part['id']}/review", headers={"X-CSRF-Token": csrf},
                    json={"verdict": "false_alarm", "comment": "on PostgreSQL",
                          "corrected": "data:image/png;base64," + _b64png(erased)})
    assert r.status_code == 200, r.text
    store = open_store(shared_log["db"], shared_log["folder"])
    review = store.reviews(part["id"])[-1]
    assert (review.reviewer, review.verdict, review.comment) == ("lea", "false_alarm", "on PostgreSQL")
    assert (store.folder / review.files["corrected"]).is_file()
    assert store.get(part["id"]).review_status == "false_alarm"
    stats = {row["station"] for row in client.get("/api/stats").json()["days"]}
    assert stats == set(STATIONS)
    store.close()


def test_the_review_station_answers_503_while_the_database_is_down_and_recovers(postgres, tmp_path):
    db = postgres.new_database()
    open_store(db, tmp_path / "log").close()
    app = create_app(ReviewConfig(tmp_path / "log", None, tmp_path / "accounts.db", db=db))
    app.state.review.accounts.add_user("ana", "reviewer-password")
    client = TestClient(app)
    client.post("/login", data={"user": "ana", "password": "reviewer-password"})
    assert client.get("/health").status_code == 200 and client.get("/api/parts").status_code == 200
    postgres.stop()
    try:
        for url in ("/health", "/api/parts"):
            r = client.get(url)
            assert r.status_code == 503 and "unavailable" in r.text and "Connection refused" in r.text, r.text
    finally:
        postgres.start()
    assert client.get("/health").json()["ok"] and client.get("/api/parts").json()["parts"] == []


def _b64png(a: np.ndarray) -> str:
    import base64
    return base64.b64encode(cv2.imencode(".png", a)[1].tobytes()).decode()


def test_a_database_restart_mid_run_loses_no_record(exported, postgres, tmp_path):
    """The server goes away for a second while the line runs: verdicts go on, records wait and are written."""
    pkg = always_fail(exported["package"], tmp_path / "pkg")
    db = postgres.new_database()
    sets = _sets(pkg, exported["manifest"].root, tmp_path / "log", db, "line-a", tmp_path / "v.jsonl",
                 **{"source.fps": 40, "source.loop": "true", "log.retry_s": 0.2})
    runner = LineRunner(load_station(None, sets))
    store = open_store(db, tmp_path / "log")
    seen = {}

    def wait_for(n):
        deadline = time.time() + 60
        while store.count() < n and time.time() < deadline:
            time.sleep(0.05)

    def outage():
        try:
            wait_for(20)
            postgres.stop()
            time.sleep(1.5)
            seen["health"] = runner.health()
            postgres.start()
            wait_for(store.count() + 20)  # written again after the restart (the outbox first)
        finally:
            runner.stop()

    import threading
    t = threading.Thread(target=outage)
    t.start()
    summary = runner.run()
    t.join()
    assert seen["health"]["log_db_unavailable"] and seen["health"]["status"] == "degraded"
    assert seen["health"]["log_outbox_records"] > 0
    assert summary["frames_total"] >= 40 and summary["log_records_lost_total"] == 0
    assert summary["log_records_total"] == summary["frames_total"]
    assert not list((tmp_path / "log" / "outbox").rglob("*.json"))
    store = open_store(db, tmp_path / "log")
    records = store.records(limit=10**4)
    assert len(records) == summary["frames_total"] and len({(r.part_id, r.ts) for r in records}) == len(records)
    assert all((store.folder / rel).is_file() for r in records for rel in r.files.values())
    assert store.recover("line-a") == {"temporary": 0, "orphans": 0}
    store.close()


def test_records_of_a_run_while_the_database_is_down_wait_in_the_outbox_for_the_next_start(exported, postgres,
                                                                                        tmp_path):
    """The runner starts and ends with the server down: nothing is lost, the next start writes it all, once."""
    pkg = always_fail(exported["package"], tmp_path / "pkg")
    db = postgres.new_database()
    open_store(db, tmp_path / "log").close()  # the database exists, then goes away
    sets = _sets(pkg, exported["manifest"].root, tmp_path / "log", db, "line-a", tmp_path / "v.jsonl")
    postgres.stop()
    try:
        first = LineRunner(load_station(None, [*sets, "source.limit=12"]))
        assert first.health()["log_db_unavailable"]
        summary = first.run()
    finally:
        postgres.start()
    assert summary["frames_total"] == 12 and summary["log_records_lost_total"] == 0
    outbox = sorted((tmp_path / "log" / "outbox" / "line-a").glob("*.json"))
    assert len(outbox) == 12
    second = LineRunner(load_station(None, [*sets, "source.limit=5"]))
    assert second.health()["log_outbox_records"] == 12
    summary = second.run()
    assert summary["log_records_total"] == 17 and summary["log_records_lost_total"] == 0
    store = open_store(db, tmp_path / "log")
    parts = [json.loads(x)["part_id"] for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert sorted(r.part_id for r in store.records(limit=100)) == sorted(parts)
    assert not list((tmp_path / "log" / "outbox").rglob("*.json"))
    store.close()
