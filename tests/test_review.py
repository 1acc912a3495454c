"""Review station: a real failure log written by the line runner, the app over HTTP, and headless Chromium."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import cv2
import numpy as np
import pytest
from conftest import always_fail
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from inspection.cli import main
from inspection.deploy.line.runner import LineRunner
from inspection.deploy.line.station import load_station
from inspection.deploy.review.app import ReviewConfig, create_app
from inspection.deploy.store.sql import SQLiteStore

LEAD, OPERATOR = ("lea", "lead-password"), ("otto", "operator-pw")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "runs" / "test-artifacts"))


@pytest.fixture(scope="module")
def line_log(exported, tmp_path_factory):
    """The tiny test set through the real runner with a package that fails every part: every part is logged."""
    tmp = tmp_path_factory.mktemp("review")
    pkg = always_fail(exported["package"], tmp / "pkg")
    sets = {"package": pkg, "source.kind": "simulated", "source.path": exported["manifest"].root,
            "jsonl": tmp / "verdicts.jsonl", "log.folder": tmp / "log", "reload_s": 0, "log.fsync": False,
            "station": "line-a", "queue.policy": "block"}
    summary = LineRunner(load_station(None, [f"{k}={v}" for k, v in sets.items()])).run()
    return {"folder": tmp / "log", "package": exported["package"], "frames": summary["frames_total"]}


@pytest.fixture
def log(line_log, tmp_path):
    """A private copy of the log (tests write reviews), with one lead and one operator."""
    folder = tmp_path / "log"
    shutil.copytree(line_log["folder"], folder)
    return folder


def _app(log: Path, package) -> TestClient:
    app = create_app(ReviewConfig(log, Path(package)))
    if not app.state.review.accounts.users():
        app.state.review.accounts.add_user(*LEAD, role="lead")
        app.state.review.accounts.add_user(*OPERATOR, role="operator")
    return TestClient(app)


def _login(client: TestClient, who=LEAD) -> str:
    r = client.post("/login", data={"user": who[0], "password": who[1]}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)


@pytest.fixture
def client(log, line_log):
    return _app(log, line_log["package"])


def _png(a: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", a)[1].tobytes()).decode()


def _store(log: Path) -> SQLiteStore:
    return SQLiteStore(log / "failures.db", log, fsync=False)


# -- access control ------------------------------------------------------------------------------------------------
def _api_routes(routes) -> list[APIRoute]:
    """Every API route of an app, inside included routers too (FastAPI includes them lazily)."""
    out = []
    for route in routes:
        sub = getattr(route, "original_router", None)
        out += _api_routes(sub.routes) if sub is not None else [route] if isinstance(route, APIRoute) else []
    return out


def test_every_page_and_api_refuses_an_unauthenticated_request(client, log):
    part = _store(log).records(limit=1)[0]
    open_routes = {"/login", "/health"}
    checked = 0
    for route in _api_routes(client.app.routes):
        if route.path in open_routes:
            continue
        path = route.path.replace("{part_id}", str(part.id)).replace("{kind}", "image")
        for method in route.methods:
            r = client.request(method, path, follow_redirects=False, json={"verdict": "defect"},
                               headers={"accept": "text/html"} if method == "GET" else {})
            assert r.status_code in (401, 303), f"{method} {path} answered {r.status_code} without a session"
            if r.status_code == 303:
                assert r.headers["location"].startswith("/login")
            assert part.part_id not in r.text
            checked += 1
    assert checked >= 14
    assert _store(log).reviews(part.id) == []


def test_wrong_passwords_hold_off_the_address_not_the_account(client):
    for _ in range(5):
        r = client.post("/login", data={"user": LEAD[0], "password": "wrong-password"}, follow_redirects=False)
        assert r.status_code == 401 and "wrong user name or password" in r.text and "review_session" not in r.cookies
    r = client.post("/login", data={"user": LEAD[0], "password": LEAD[1]}, follow_redirects=False)
    assert r.status_code == 401 and "too many failed logins from this address" in r.text
    owner = TestClient(client.app, client=("10.0.0.7", 50001))  # the account's owner at another station
    r = owner.post("/login", data={"user": LEAD[0], "password": LEAD[1]}, follow_redirects=False)
    assert r.status_code == 303  # not locked out (after a one-second back-off)
    log = client.app.state.review.cfg.log
    assert not (log / "review.db").exists()  # the password hashes live outside the folder the station serves
    db = sqlite3.connect(log.parent / f"{log.name}.accounts.db")
    (stored,) = db.execute("SELECT pw_hash FROM users WHERE name = ?", (LEAD[0],)).fetchone()
    assert stored.startswith("scrypt$") and LEAD[1] not in stored


def test_accounts_live_outside_the_log_folder_and_a_file_planted_inside_is_not_taken_over(tmp_path, capsys):
    """A station that can write the log folder plants review.db (where earlier versions kept accounts) with a
    lead of its own: it is neither moved into place nor used; the command says how to check and move it. The
    accounts file is readable by its owner only."""
    import stat

    from inspection.deploy.review.accounts import (
        Accounts,
        AccountsError,
        default_accounts,
    )

    log = tmp_path / "failures"
    log.mkdir()
    Accounts(log / "review.db").add_user("intruder", "a long passphrase", "lead")
    with pytest.raises(AccountsError, match="not used"):
        default_accounts(log)
    assert main(["users", "add", "ana", "--role", "lead", "--log", str(log)]) == 2
    assert "review.db" in capsys.readouterr().err
    assert (log / "review.db").exists() and not (tmp_path / "failures.accounts.db").exists()
    (log / "review.db").unlink()
    path = default_accounts(log)
    assert path == tmp_path / "failures.accounts.db"
    Accounts(path).add_user("ana", "a long passphrase", "lead")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [u["name"] for u in Accounts(path).users()] == ["ana"]


def test_a_stranger_cannot_keep_a_user_out_nor_tell_real_names(client, monkeypatch):
    from inspection.deploy.review import accounts as auth

    clock = [auth.time.time()]
    monkeypatch.setattr(auth, "_now", lambda: clock[0])
    monkeypatch.setattr(auth, "ACCOUNT_DELAY_S", 0.0)
    stranger = TestClient(client.app, client=("10.0.0.66", 40000))
    for _ in range(5):
        stranger.post("/login", data={"user": LEAD[0], "password": "wrong-password"})
    for minute in range(6, 60, 6):  # then one wrong attempt now and then, for an hour
        clock[0] += 360
        stranger.post("/login", data={"user": LEAD[0], "password": "wrong-password"})
        owner = TestClient(client.app, client=(f"10.0.1.{minute}", 50000))
        assert owner.post("/login", data={"user": LEAD[0], "password": LEAD[1]},
                          follow_redirects=False).status_code == 303, minute
    monkeypatch.undo()
    # the known name fails again and again below, an unknown one once each: the back-off after five failures
    # (which counts failures on any name alike) would time the known name's later tries, not scrypt
    monkeypatch.setattr(auth, "ACCOUNT_DELAY_S", 0.0)
    # an unknown name: the same status, page and time as a known name with a wrong password
    answers, times = {}, {"known": [], "unknown": []}
    for k in range(9):
        for kind, name in (("known", LEAD[0]), ("unknown", f"nobody{k}")):
            c = TestClient(client.app, client=(f"10.0.2.{2 * k + (kind == 'known')}", 50000))
            t = time.perf_counter()
            r = c.post("/login", data={"user": name, "password": "wrong-password"}, follow_redirects=False)
            times[kind].append(time.perf_counter() - t)
            answers[kind] = (r.status_code, r.text.replace(name, "NAME"))
    assert answers["known"] == answers["unknown"] and answers["known"][0] == 401
    # the fastest of each: another job on the machine only adds time, so the minimum is the cost itself
    ratio = min(times["unknown"]) / min(times["known"])
    assert 0.6 < ratio < 1.6, times  # one scrypt each (an unknown name cost two before)


def test_user_names_are_normalized_so_look_alikes_cannot_be_created(client):
    accounts = client.app.state.review.accounts
    accounts.add_user("Ana.QA", "a long passphrase", role="operator")
    for twin in ("ana.qa", "ＡＮＡ.ＱＡ", " Ana.QA "):  # case, full-width letters, spaces
        with pytest.raises(Exception, match="exists already"):
            accounts.add_user(twin, "another passphrase")
    r = TestClient(client.app, client=("10.0.3.1", 1)).post("/login", data={"user": "ＡＮＡ.qa", "password":
                                                                          "a long passphrase"}, follow_redirects=False)
    assert r.status_code == 303


def test_missing_or_wrong_csrf_token_is_refused(client, log):
    csrf = _login(client)
    part = _store(log).records(limit=1)[0]
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": csrf[:-1]}):
        r = client.post(f"/api/parts/{part.id}/review", json={"verdict": "defect"}, headers=headers)
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = client.post("/admin/users", data={"action": "add", "name": "mallory", "password": "12345678", "role": "lead"})
    assert r.status_code == 403
    r = client.post("/logout", data={}, follow_redirects=False)
    assert r.status_code == 403 and client.get("/api/parts").status_code == 200  # still logged in
    assert _store(log).reviews(part.id) == []
    assert "mallory" not in {u["name"] for u in client.app.state.review.accounts.users()}


def test_an_operator_cannot_call_qa_lead_actions(client):
    csrf = _login(client, OPERATOR)
    assert client.get("/admin").status_code == 403
    for path, data in (("/admin/users", {"action": "add", "name": "eve", "password": "12345678", "role": "lead"}),
                       ("/admin/settings", {"defect_types": "x"}), ("/admin/export", {})):
        r = client.post(path, data={**data, "csrf": csrf}, follow_redirects=False)
        assert r.status_code == 403, path
    assert "eve" not in {u["name"] for u in client.app.state.review.accounts.users()}
    assert client.app.state.review.accounts.setting("defect_types") is None


def test_path_traversal_in_image_urls_is_refused(client, log):
    _login(client)
    store = _store(log)
    part = store.records(limit=1)[0]
    for kind in ("..%2F..%2Ffailures.db", "..%2Freview.db", "%2Fetc%2Fpasswd", "files", "corrected_full"):
        r = client.get(f"/parts/{part.id}/file/{kind}")
        assert r.status_code == 404 and b"SQLite" not in r.content
    assert client.get("/static/../review.db").status_code == 404
    assert client.get("/static/%2e%2e/app.py").status_code == 404
    # a record whose stored path points outside the log (a tampered database) is not served either
    with store.db:
        store.db.execute("UPDATE failures SET files = ? WHERE id = ?", (json.dumps({"image": "../../etc/passwd"}),
                                                                         part.id))
    r = client.get(f"/parts/{part.id}/file/image")
    assert r.status_code == 404 and b"root:" not in r.content


def test_paths_stored_in_records_never_reach_files_outside_the_parts_own(client, log, tmp_path):
    """A station that can write the failure database controls every stored path: the review server must not turn
    them into reading (served files, dataset export) or writing (corrected maps) files that are not the part's."""
    outside = tmp_path / "outside"
    outside.mkdir()
    csrf = _login(client)
    store = _store(log)
    parts = store.records(limit=6, review_status="unreviewed")
    secret = outside / "secret.png"
    cv2.imwrite(str(secret), np.full((8, 8), 7, np.uint8))
    link = store.path(parts[0], "image").parent / f"x-{'a' * 10}-image.png"  # the right name, pointing outside
    link.symlink_to(secret)
    hostile = [{"image": "../../../../etc/passwd"}, {"image": str(secret)}, {"image": link.relative_to(log).as_posix()},
               {**parts[3].files, "overlay": "review.db"}, {**parts[4].files, "map": str(outside / "m.png")},
               {**parts[5].files,
                "map": parts[5].files["map"].rsplit("/", 1)[0] + "/../../../escape-0123456789-map.png"}]
    with store.db:
        for part, files in zip(parts, hostile):
            store.db.execute("UPDATE failures SET files = ? WHERE id = ?", (json.dumps(files), part.id))
    for part, kind in ((parts[0], "image"), (parts[1], "image"), (parts[2], "image"), (parts[3], "overlay")):
        r = client.get(f"/parts/{part.id}/file/{kind}")
        assert r.status_code == 404 and b"root:" not in r.content and b"SQLite" not in r.content, kind
    cv2.imwrite(str(outside / "m.png"), np.zeros((8, 8), np.uint16))
    for part in parts[4:]:  # a corrected map is written beside the part's map: only where the log writes
        r = client.post(f"/api/parts/{part.id}/review", json={"verdict": "defect", "defect_type": "hole",
                                                              "corrected": _png(np.zeros((8, 8), np.uint8))},
                        headers={"X-CSRF-Token": csrf})
        assert r.status_code == 400 and "attention map" in r.json()["error"], r.text
    assert sorted(p.name for p in outside.iterdir()) == ["m.png", "secret.png"]
    assert not list(log.parent.glob("escape-*")) and not list(log.glob("escape-*"))
    for part in parts[:4]:
        assert client.post(f"/api/parts/{part.id}/review", json={"verdict": "defect", "defect_type": "hole"},
                           headers={"X-CSRF-Token": csrf}).status_code == 200
    z = zipfile.ZipFile(io.BytesIO(client.post("/admin/export", data={"csrf": csrf}).content))
    for name in z.namelist():
        data = z.read(name)
        assert b"root:" not in data and b"SQLite" not in data, name
        if name.endswith(".png"):
            assert data != secret.read_bytes(), name
    assert f"_{parts[3].id}." in " ".join(z.namelist())  # the part with a hostile overlay still has its own image


def test_sql_injection_in_filters_matches_nothing_and_breaks_nothing(client, log):
    _login(client)
    total = client.get("/api/parts").json()["total"]
    assert total > 0
    for station in ("' OR 1=1 --", "line-a' OR '1'='1", "x'; DROP TABLE failures; --"):
        assert client.get("/api/parts", params={"station": station}).json()["total"] == 0
    r = client.get("/api/parts", params={"score_min": "0 OR 1=1"})
    assert r.status_code == 400 and "score_min must be a number" in r.json()["error"]
    r = client.get("/api/parts", params={"date_from": "2026-13-45"})
    assert r.status_code == 400 and "date_from" in r.json()["error"]
    assert client.get("/api/parts").json()["total"] == total == _store(log).count()


# -- queue ---------------------------------------------------------------------------------------------------------
def test_queue_filters_and_key_paging_cover_every_part_once_newest_first(client, log):
    _login(client)
    store = _store(log)
    seen, cursor = [], None
    while True:
        page = client.get("/api/parts", params={"limit": 7, **({"before": cursor} if cursor else {})}).json()
        seen += page["parts"]
        cursor = page["next"]
        if not cursor:
            break
    assert [p["id"] for p in seen] == [r.id for r in store.records(limit=10**6)]
    assert [p["ts"] for p in seen] == sorted((p["ts"] for p in seen), reverse=True)
    scores = sorted(p["score"] for p in seen if p["score"] is not None)
    mid = scores[len(scores) // 2]
    hi = client.get("/api/parts", params={"score_min": mid, "limit": 500}).json()
    assert hi["total"] == sum(s >= mid for s in scores) and all(p["score"] >= mid for p in hi["parts"])
    dtype = next(p["defect_type"] for p in seen if p["defect_type"])
    typed = client.get("/api/parts", params={"defect_type": dtype, "limit": 500}).json()
    assert typed["total"] == sum(p["defect_type"] == dtype for p in seen) > 0
    today = time.strftime("%Y-%m-%d")
    assert client.get("/api/parts", params={"date_from": today, "date_to": today}).json()["total"] == len(seen)
    assert client.get("/api/parts", params={"date_to": "2000-01-01"}).json()["total"] == 0
    assert client.get("/api/parts", params={"station": "line-a"}).json()["status_counts"]["unreviewed"] == len(seen)


# -- reviews -------------------------------------------------------------------------------------------------------
def test_two_reviewers_at_once_lose_neither_review(log, line_log):
    a, b = _app(log, line_log["package"]), _app(log, line_log["package"])
    tokens = [(a, _login(a, LEAD)), (b, _login(b, OPERATOR))]
    part = _store(log).records(limit=1)[0]
    errors = []

    def hammer(client, csrf, verdict):
        for i in range(15):
            r = client.post(f"/api/parts/{part.id}/review", json={"verdict": verdict, "comment": f"{verdict} {i}"},
                            headers={"X-CSRF-Token": csrf})
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=hammer, args=(c, t, v)) for (c, t), v in zip(tokens, ("defect", "false_alarm"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = _store(log).reviews(part.id)
    assert len(history) == 30
    assert {h.reviewer for h in history} == {LEAD[0], OPERATOR[0]}
    assert sorted(h.comment for h in history) == sorted([f"defect {i}" for i in range(15)] +
                                                        [f"false_alarm {i}" for i in range(15)])
    last = history[-1]
    assert _store(log).get(part.id).review_status == {"defect": "confirmed", "false_alarm": "false_alarm"}[last.verdict]


def test_a_corrected_map_rescores_at_once_and_is_saved_as_a_training_target(client, log):
    csrf = _login(client)
    part = _store(log).records(limit=1)[0]
    att = client.get(f"/parts/{part.id}/attention.png")
    model_map = cv2.imdecode(np.frombuffer(att.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    image = cv2.imread(str(_store(log).path(part, "image")), cv2.IMREAD_UNCHANGED)
    assert model_map.shape == image.shape[:2]
    r = client.post(f"/api/parts/{part.id}/rescore", json={"corrected": _png(np.zeros_like(model_map))},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    out = r.json()
    assert abs(sum(out["after"]["probs"].values()) - 1) < 1e-4
    assert out["after"]["probs"] != out["before"]["probs"]
    assert abs(out["before"]["defect_score"] - part.score) < 0.05  # the model's own map gives the logged score back
    erased = np.zeros_like(model_map)
    erased[: erased.shape[0] // 3] = 255
    r = client.post(f"/api/parts/{part.id}/review", json={"verdict": "false_alarm", "corrected": _png(erased)},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["history"][-1]["corrected"]
    again = cv2.imdecode(np.frombuffer(client.get(f"/parts/{part.id}/attention.png?corrected=1").content, np.uint8),
                         cv2.IMREAD_GRAYSCALE)
    assert np.abs(again.astype(int) - erased).max() <= 1
    z = zipfile.ZipFile(io.BytesIO(client.post("/admin/export", data={"csrf": csrf}).content))
    names = z.namelist()
    assert any(n.startswith("reviewed/good/") for n in names)
    corrected = [n for n in names if n.startswith("reviewed/corrected/good/")]
    assert len(corrected) == 1
    target = cv2.imdecode(np.frombuffer(z.read(corrected[0]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert target.shape == image.shape[:2] and target.dtype == np.uint16
    actions = [a["action"] for a in client.app.state.review.accounts.audit_log()]
    assert "export" in actions and "rescore" in actions and "login" in actions


def test_rescoring_returns_the_boxes_of_the_corrected_map(client, log):
    csrf = _login(client)
    part = _store(log).records(limit=1)[0]
    h, w = cv2.imread(str(_store(log).path(part, "image")), cv2.IMREAD_UNCHANGED).shape[:2]
    painted = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = h // 4, 3 * h // 4, w // 2, w - 2
    painted[y0:y1, x0:x1] = 255                                 # the operator paints one region
    out = client.post(f"/api/parts/{part.id}/rescore", json={"corrected": _png(painted)},
                      headers={"X-CSRF-Token": csrf}).json()
    assert out["after"]["verdict"] != "pass"                    # (the test package fails every part)
    (box,) = out["after"]["boxes"]                              # one box, on the region (at the map's cell grid)
    inter = max(0, min(box["x1"], x1) - max(box["x0"], x0)) * max(0, min(box["y1"], y1) - max(box["y0"], y0))
    union = (box["x1"] - box["x0"]) * (box["y1"] - box["y0"]) + (x1 - x0) * (y1 - y0) - inter
    assert inter / union > 0.5, (box, w, h)
    assert isinstance(out["before"]["boxes"], list)
    empty = client.post(f"/api/parts/{part.id}/rescore", json={"corrected": _png(np.zeros((h, w), np.uint8))},
                        headers={"X-CSRF-Token": csrf}).json()
    assert empty["after"]["boxes"] == []


def test_one_verdict_for_several_parts_is_a_review_and_an_audit_entry_per_part(client, log):
    csrf = _login(client, OPERATOR)
    parts = _store(log).records(limit=4)
    ids = [p.id for p in parts[:3]]
    bad = client.post("/api/reviews", json={"ids": ids + [10**9], "verdict": "false_alarm"},
                      headers={"X-CSRF-Token": csrf})
    assert bad.status_code == 404 and str(10**9) in bad.text
    assert all(not _store(log).reviews(i) for i in ids)        # nothing written when one id is unknown
    for body in ({"ids": [], "verdict": "false_alarm"}, {"ids": ["1"], "verdict": "false_alarm"},
                 {"ids": list(range(1, 502)), "verdict": "false_alarm"}, {"ids": ids, "verdict": "maybe"}):
        r = client.post("/api/reviews", json=body, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 400 and ("ids" in r.text or "verdict" in r.text), r.text
    r = client.post("/api/reviews", json={"ids": ids + ids[:1], "verdict": "false_alarm", "comment": "lamp glare"},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    reviewed = r.json()["reviewed"]
    assert [x["id"] for x in reviewed] == ids and {x["review_status"] for x in reviewed} == {"false_alarm"}
    for i in ids:
        (v,) = _store(log).reviews(i)
        assert (v.reviewer, v.verdict, v.comment) == (OPERATOR[0], "false_alarm", "lamp glare")
    assert not _store(log).reviews(parts[3].id)
    audit = [a for a in client.app.state.review.accounts.audit_log() if a["action"] == "review"]
    assert sorted(a["detail"]["part"] for a in audit) == sorted(ids) and {a["detail"]["group"] for a in audit} == {3}
    assert {a["user"] for a in audit} == {OPERATOR[0]}


def test_the_queue_grid_shows_a_thumbnail_of_each_part(client, log):
    _login(client)
    part = _store(log).records(limit=1)[0]
    page = client.get("/?view=grid")
    assert page.status_code == 200 and f'data-id="{part.id}"' in page.text and "view=grid" in page.text
    thumb = client.get(f"/parts/{part.id}/thumb.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and max(img.shape[:2]) <= 240
    assert client.get("/parts/999999999/thumb.jpg").status_code == 404


def test_the_overlay_is_drawn_from_image_and_map_and_an_older_logs_overlay_file_is_still_shown(client, log):
    """The line logs no overlay file: the grid draws it from the stored image, map and boxes (the map's colours
    are on it); a part logged with an overlay file (an earlier version's log) shows that file."""
    from inspection.deploy.store.summary import part_picture

    _login(client)
    store = _store(log)
    part = next(r for r in store.records(limit=100) if "x0" in str(r.boxes))
    assert set(part.files) == {"image", "map"}
    image = cv2.imread(str(store.path(part, "image")), cv2.IMREAD_COLOR)
    drawn = part_picture(store, part)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.abs(drawn.astype(int) - image).mean() > 10  # the map and boxes are drawn over the image
    b = next(b for b in part.boxes if "x0" in b)
    assert tuple(drawn[b["y0"], (b["x0"] + b["x1"]) // 2]) != tuple(image[b["y0"], (b["x0"] + b["x1"]) // 2])

    old = part.files["image"].replace("-image.", "-overlay.").rsplit(".", 1)[0] + ".jpg"
    cv2.imwrite(str(log / old), np.full((40, 60, 3), (0, 200, 0), np.uint8))  # an earlier version's overlay file
    with sqlite3.connect(log / "failures.db") as db:
        db.execute("UPDATE failures SET files = ? WHERE id = ?", (json.dumps({**part.files, "overlay": old}), part.id))
    thumb = cv2.imdecode(np.frombuffer(client.get(f"/parts/{part.id}/thumb.jpg").content, np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == (40, 60, 3) and abs(int(thumb[20, 30, 1]) - 200) < 8 and thumb[20, 30, 2] < 20


def test_a_map_of_the_wrong_shape_is_rejected_with_a_message(client, log):
    csrf = _login(client)
    part = _store(log).records(limit=1)[0]
    for path in (f"/api/parts/{part.id}/review", f"/api/parts/{part.id}/rescore"):
        r = client.post(path, json={"verdict": "defect", "defect_type": "hole",
                                    "corrected": _png(np.zeros((7, 40), np.uint8))}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 400, r.text
        assert "shape" in r.json()["error"] or "aspect" in r.json()["error"]
        r = client.post(path, json={"verdict": "defect", "corrected": "data:image/png;base64,bm90IGEgcG5n"},
                        headers={"X-CSRF-Token": csrf})
        assert r.status_code == 400 and "PNG" in r.json()["error"]
    assert _store(log).reviews(part.id) == []


def test_a_part_whose_image_is_missing_shows_a_placeholder_and_can_still_be_judged(client, log):
    csrf = _login(client)
    store = _store(log)
    part = store.records(limit=1)[0]
    store.path(part, "image").unlink()
    page = client.get(f"/parts/{part.id}")
    assert page.status_code == 200 and 'id="placeholder"' in page.text and part.files["image"] in page.text
    r = client.post(f"/api/parts/{part.id}/rescore", json={"corrected": _png(np.zeros((8, 8), np.uint8))},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 409 and "image file is missing" in r.json()["error"]
    r = client.post(f"/api/parts/{part.id}/review", json={"verdict": "defect", "defect_type": "hole"},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and store.get(part.id).review_status == "confirmed"


def test_statistics_count_inspected_parts_and_false_alarms(client, log, line_log):
    csrf = _login(client)
    parts = _store(log).records(limit=4)
    for p, verdict in zip(parts, ("false_alarm", "false_alarm", "defect", "unsure")):
        assert client.post(f"/api/parts/{p.id}/review", json={"verdict": verdict},
                           headers={"X-CSRF-Token": csrf}).status_code == 200
    (day,) = client.get("/api/stats").json()["days"]
    assert day["station"] == "line-a" and day["inspected"] == line_log["frames"]
    assert day["fail"] == day["logged"] == _store(log).count()
    assert (day["confirmed"], day["false_alarm"], day["unsure"]) == (1, 2, 1)
    assert day["false_alarm_rate"] == pytest.approx(2 / 3) and day["fail_rate"] == pytest.approx(1.0)
    page = client.get("/stats").text
    assert "<svg" in page and "polyline" in page


def test_a_hostile_day_in_the_tallies_is_shown_as_text_and_pages_carry_a_strict_policy(client, log):
    _login(client)
    _store(log).tally("line-a", {("9999-<img src=x onerror=alert(1)>", "pass"): 1})  # a station writing the log
    r = client.get("/stats")
    assert r.status_code == 200 and "<img src=x" not in r.text and "&lt;img src=x" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp.split(
        "script-src")[1].split(";")[0]
    for path in ("/", "/stats", "/admin", f"/parts/{_store(log).records(limit=1)[0].id}"):
        page = client.get(path)
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), path  # no inline script to allow


def test_malformed_ids_cursors_and_bodies_get_a_4xx_with_a_message(client, log):
    csrf = _login(client)
    part = _store(log).records(limit=1)[0]
    huge = "9" * 23  # past SQL's 64-bit integers
    for path in (f"/parts/{huge}", f"/parts/{huge}/file/image", f"/parts/{huge}/attention.png"):
        r = client.get(path)
        assert r.status_code == 404 and "no logged part" in r.json()["error"], path
    r = client.get(f"/api/parts?before=1:{huge}")
    assert r.status_code == 400 and "before must be" in r.json()["error"]
    for body, field in ((["defect"], "JSON object"), ({"verdict": ["defect"]}, "verdict"),
                        ({"verdict": "defect", "defect_type": {"a": 1}}, "defect_type"),
                        ({"verdict": "defect", "defect_type": "x" * 5_000_000}, "defect_type"),
                        ({"verdict": "defect", "defect_type": "dent"}, "hole, scratch, stain"),
                        ({"verdict": "unsure", "comment": {"a": 1}}, "comment")):
        r = client.post(f"/api/parts/{part.id}/review", json=body, headers={"X-CSRF-Token": csrf})
        shown = body if len(str(body)) < 99 else field
        assert r.status_code == 400 and field in r.json()["error"], (shown, r.text[:200])
    assert _store(log).get(part.id).review_status == "unreviewed"  # nothing was stored


def _png_bomb(side: int = 30000) -> bytes:
    """A valid gray PNG of side x side zeros: under a megabyte on the wire, side² bytes once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, rows, parts = zlib.compressobj(9), bytes(side + 1) * 1000, []
    for _ in range(side // 1000):
        parts.append(z.compress(rows))
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


@contextlib.contextmanager
def _station_process(log, package):
    """`inspection review` in its own process, a logged-in lead client, and a reader of its memory (MB)."""
    import subprocess
    import sys

    import httpx

    _app(log, package)  # the accounts
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "inspection.cli", "review", "--log", str(log), "--package",
                               str(package), "--port", str(port)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                httpx.get(base + "/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = httpx.Client(base_url=base, timeout=60)
        client.post("/login", data={"user": LEAD[0], "password": LEAD[1]})
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)

        def vm(key: str) -> int:
            status = Path(f"/proc/{server.pid}/status").read_text()
            return int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) // 1024

        yield SimpleNamespace(base=base, client=client, csrf=csrf, vm=vm, pid=server.pid)
    finally:
        server.terminate()
        server.wait(10)


def _while_health(base: str, attack) -> list[float]:
    """Run attack() in a thread while /health is asked every 50 ms on an open connection; the answer times.
    The attack's bodies are encoded before it starts: encoding 50 MB in this process would hold the GIL and
    time this process, not the server."""
    import httpx

    waits = []
    with httpx.Client(base_url=base, timeout=5) as health:
        health.get("/health")  # the connection is opened before the clock runs
        thread = threading.Thread(target=attack)
        thread.start()
        while thread.is_alive():
            t = time.perf_counter()
            assert health.get("/health").status_code == 200
            waits.append(time.perf_counter() - t)
            time.sleep(0.05)
        thread.join()
    return waits


def test_a_png_bomb_and_huge_bodies_cost_no_memory_and_never_block_health(line_log, log):
    """The review station in its own process: a 30000x30000 PNG as a corrected map and a 50 MB body are refused
    (400, 413) while the server's peak memory stays within 100 MB of idle and /health keeps answering in 1 s."""
    bomb = "data:image/png;base64," + base64.b64encode(_png_bomb()).decode()
    with _station_process(log, line_log["package"]) as st:
        client, csrf = st.client, st.csrf
        part = _store(log).records(limit=1)[0]
        Path(f"/proc/{st.pid}/clear_refs").write_text("5")  # restart the peak-memory count here
        idle, answers = st.vm("VmRSS"), {}

        bodies = [(name, path, json.dumps(body).encode())
                  for name, path, body in (("bomb", "review", {"verdict": "defect", "corrected": bomb}),
                                           ("rescore", "rescore", {"corrected": bomb}),
                                           ("50 MB", "review", {"verdict": "unsure", "comment": "x" * 50_000_000}))]

        def attack():
            for name, path, body in bodies:
                answers[name] = client.post(f"/api/parts/{part.id}/{path}", content=body,
                                            headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})

        waits = _while_health(st.base, attack)
        peak = st.vm("VmHWM")
    print(f"idle {idle} MB, peak {peak} MB, /health slowest {max(waits):.3f} s over {len(waits)} calls")
    assert answers["bomb"].status_code == 400 and "30000x30000" in answers["bomb"].json()["error"]
    assert answers["rescore"].status_code == 400 and answers["50 MB"].status_code == 413
    assert peak - idle <= 100 and max(waits) < 1.0
    assert _store(log).get(part.id).review_status == "unreviewed"


def test_a_stored_image_or_map_that_is_a_png_bomb_is_not_decoded(line_log, log):
    """A station with write access to the log folder replaces a part's image and map with PNG bombs (under a MB,
    30000x30000 px): the part page, the map to paint on, the overlay and the dataset export read the header and
    refuse them; the server's memory stays within 100 MB of idle and /health answers in 1 s."""
    from inspection.deploy.store.to_dataset import export_reviewed

    store = _store(log)
    part = store.records(limit=1)[0]
    for kind in ("image", "map"):
        store.stored_file(part.files[kind], kind).write_bytes(_png_bomb())
    store.add_review(part.id, "ana", "false_alarm")
    with _station_process(log, line_log["package"]) as st:
        Path(f"/proc/{st.pid}/clear_refs").write_text("5")
        idle, answers = st.vm("VmRSS"), {}

        def attack():
            for path in (f"/parts/{part.id}", f"/parts/{part.id}/attention.png",
                         f"/parts/{part.id}/attention.png?corrected=1"):
                answers[path] = st.client.get(path)

        waits = _while_health(st.base, attack)
        peak = st.vm("VmHWM")
    print(f"idle {idle} MB, peak {peak} MB, /health slowest {max(waits):.3f} s over {len(waits)} calls")
    assert answers[f"/parts/{part.id}"].status_code == 200
    assert all(answers[p].status_code == 404 for p in list(answers)[1:])
    assert peak - idle <= 100 and max(waits) < 1.0
    counts = export_reviewed(store, log.parent / "export")
    assert counts["skipped"].get("image refused before decoding") == 1


def test_lead_manages_users_and_the_new_operator_can_log_in(client):
    csrf = _login(client)
    r = client.post("/admin/users", data={"csrf": csrf, "action": "add", "name": "nina", "password": "short",
                                          "role": "operator"})
    assert r.status_code == 200 and "at least 8 characters" in r.text  # the redirect shows the message
    client.post("/admin/users", data={"csrf": csrf, "action": "add", "name": "nina", "password": "nina-password",
                                      "role": "operator"})
    other = TestClient(client.app)
    _login(other, ("nina", "nina-password"))
    client.post("/admin/users", data={"csrf": csrf, "action": "disable", "name": "nina"})
    assert other.get("/api/parts").status_code == 401  # her session ends with the account
    assert any(a["action"] == "disable user" for a in client.app.state.review.accounts.audit_log())


# -- the browser -----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(log, line_log):
    import uvicorn

    app = _app(log, line_log["package"]).app
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_script_in_every_stored_text_field_never_runs_in_a_browser(server, log):
    """A station that writes the database puts script in every text it controls; headless Chromium opens every
    page as a QA lead: no dialog opens, and every page carries the Content-Security-Policy."""
    from playwright.sync_api import sync_playwright

    xss = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    store = _store(log)
    part = store.records(limit=1)[0]
    with store.db:
        store.db.execute("UPDATE failures SET part_id = ?, station = ?, model_version = ?, defect_type = ?, "
                         "verdict = ?, boxes = ? WHERE id = ?",
                         (xss, xss, xss, xss, "fail", json.dumps([{"xyxy": [1, 1, 5, 5], "score": 0.9, "label": xss}]),
                          part.id))
    store.add_review(part.id, xss, "defect", xss, xss)
    store.tally(xss, {(f"9999-{xss}", "fail"): 1})
    dialogs, policies = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("response", lambda r: policies.append((r.url, r.headers.get("content-security-policy")))
                if r.request.resource_type == "document" else None)
        page.goto(server + "/login")
        page.fill("input[name=user]", LEAD[0])
        page.fill("input[name=password]", LEAD[1])
        page.press("input[name=password]", "Enter")
        page.wait_for_selector("#queue")
        for path in ("/", f"/?station={quote(xss)}", f"/parts/{part.id}", "/stats", "/admin"):
            page.goto(server + path)
            page.wait_for_load_state("load")
            page.wait_for_timeout(300)
            injected = page.locator("img[src=x], script:not([src])").count()
            assert injected == 0 and ("alert(1)" in page.content() or path == "/admin"), path  # text, not markup
        browser.close()
    assert dialogs == [], dialogs
    assert policies and all(csp and "script-src 'self'" in csp for _, csp in policies), policies


def _erase_everything(page) -> dict:
    """The erase brush at full size in zigzags across the whole map, once the map has loaded; returns the map
    canvas's bounding box."""
    page.locator("#heat[data-ready='1']").wait_for(state="attached")
    page.keyboard.press("e")
    page.evaluate("document.getElementById('brush').value = 200")
    box = page.locator("#heat").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    for k in range(12):
        for x in (2, box["width"] - 2):
            page.mouse.move(box["x"] + x, box["y"] + box["height"] * k / 11, steps=6)
    page.mouse.up()
    return box


def test_browser_login_filter_open_confirm_paint_rescore_logout(server, log):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed for the browser tests: `make browser` installs it"
    store = _store(log)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server + "/")
        expect(page).to_have_url(re.compile(r"/login"))
        page.fill("input[name=user]", OPERATOR[0])
        page.fill("input[name=password]", OPERATOR[1])
        page.press("input[name=password]", "Enter")
        expect(page.locator("#queue")).to_be_visible()
        # filter: the parts of one defect type
        dtype = store.records(limit=1)[0].defect_type
        page.select_option("select[name=defect_type]", dtype)
        page.click("#apply")
        expect(page.locator("#counts")).to_contain_text(f"{store.count(defect_type=dtype)} part(s)")
        assert page.locator("#queue tbody tr").count() == min(50, store.count(defect_type=dtype))
        assert "station=" not in page.url and f"defect_type={dtype}" in page.url  # empty filters stay out of the URL
        # open the first part with the keyboard
        page.keyboard.press("j")
        page.keyboard.press("Enter")
        expect(page.locator("#heat")).to_be_visible()
        part_id = int(page.locator("#part").get_attribute("data-id"))
        # paint: the erase brush at full size across the whole image, then re-score
        _erase_everything(page)
        expect(page.locator("#edited")).to_contain_text("edited")
        page.keyboard.press("r")
        expect(page.locator("#rescored")).to_be_visible()
        before = float(page.locator("#rescore-result tr.total td").nth(1).inner_text())
        after = float(page.locator("#rescored").inner_text().split()[0])
        assert after != before
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review_part.png"), full_page=True)
        # confirm with the keyboard: the review (with the painted map) lands in the store
        page.keyboard.press("d")
        deadline = time.time() + 10
        while not store.reviews(part_id) and time.time() < deadline:
            time.sleep(0.1)
        (review,) = store.reviews(part_id)
        assert (review.reviewer, review.verdict, review.defect_type) == (OPERATOR[0], "defect", dtype)
        painted = cv2.imread(str(log / review.files["corrected_full"]), cv2.IMREAD_UNCHANGED)
        assert painted.max() < 0.2 * 65535  # erased
        page.wait_for_url(re.compile(r"/parts/\d+"))
        page.click("#logout")
        expect(page).to_have_url(re.compile(r"/login"))
        page.goto(server + "/")
        expect(page).to_have_url(re.compile(r"/login"))
        browser.close()
    assert (ARTIFACTS / "review_part.png").stat().st_size > 10_000


def test_browser_grid_selects_parts_with_the_keyboard_and_judges_them_at_once(server, log):
    from playwright.sync_api import expect, sync_playwright

    store = _store(log)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server + "/login")
        page.fill("input[name=user]", OPERATOR[0])
        page.fill("input[name=password]", OPERATOR[1])
        page.press("input[name=password]", "Enter")
        expect(page.locator("#queue")).to_be_visible()
        page.keyboard.press("g")                                        # to the grid
        expect(page.locator("#grid")).to_be_visible()
        cards = page.locator("#grid li.card")
        assert cards.count() == min(50, store.count())
        loaded = ("[...document.querySelectorAll('#grid img')].slice(0, 4)"
                  ".every((i) => i.complete && i.naturalWidth > 0)")
        deadline = time.time() + 10
        while not page.evaluate(loaded) and time.time() < deadline:   # (the page's CSP forbids wait_for_function)
            time.sleep(0.1)
        assert page.evaluate(loaded), "thumbnails did not load"
        for key in ("l", "x", "l", "Shift+L", "l"):                     # pick cards 1-3, leave card 4 focused only
            page.keyboard.press(key)
        expect(page.locator("#picked-count")).to_have_text("3 selected")
        ids = [int(cards.nth(k).get_attribute("data-id")) for k in range(4)]
        moved = sum("false_alarm" not in cards.nth(k).locator(".status").get_attribute("class") for k in range(3))
        false_alarms = page.locator('#counts [data-status="false_alarm"]')
        assert moved, "the picked parts must not be false alarms yet"
        before = int(false_alarms.get_attribute("data-n"))
        page.keyboard.press("f")
        expect(page.locator("#bulk-message")).to_contain_text("3 part(s) marked false alarm")
        expect(false_alarms).to_have_text(f"false alarm {before + moved}")  # the counts line follows the verdict
        for i in ids[:3]:
            (v,) = store.reviews(i)
            assert (v.reviewer, v.verdict) == (OPERATOR[0], "false_alarm")
        assert not store.reviews(ids[3])
        expect(cards.nth(0).locator(".status")).to_have_text("false alarm")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review_grid.png"))
        # a part: paint with the add brush, re-score: the corrected map's boxes are drawn dashed beside the line's
        page.goto(server + f"/parts/{ids[3]}")
        expect(page.locator("#heat")).to_be_visible()
        box = _erase_everything(page)                                   # then add one stroke
        page.keyboard.press("a")
        page.evaluate("document.getElementById('brush').value = 30")   # px of the frame (this one is ~70 px wide)
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.5, steps=10)
        page.mouse.up()
        page.keyboard.press("r")
        expect(page.locator("#rescored-boxes")).to_have_text("1")
        expect(page.locator("#boxes rect.after")).to_have_count(1)
        expect(page.locator("#box-legend")).to_be_visible()
        browser.close()


def test_cli_creates_accounts_and_serves_the_station(line_log, log, tmp_path):
    """`inspection users` and `inspection review` as an operator would run them, in their own process."""
    import subprocess
    import sys
    import urllib.request

    import httpx

    from inspection.cli import main

    env = {**os.environ, "REVIEW_PASSWORD": "cli-password"}
    run = [sys.executable, "-m", "inspection.cli"]
    assert subprocess.run(run + ["review", "--log", str(log)], env=env, capture_output=True,
                          text=True).stderr.count("no review accounts yet") == 1
    r = subprocess.run(run + ["users", "add", "cli-lead", "--role", "lead", "--log", str(log)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(run + ["users", "add", "x", "--log", str(log)], env={**env, "REVIEW_PASSWORD": "short"},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "at least 8 characters" in r.stderr
    r = subprocess.run(run + ["users", "add", "cli-lead", "--log", str(log)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "exists" in r.stderr  # a second add of the same name is an error...
    r = subprocess.run(run + ["users", "add", "cli-lead", "--log", str(log), "--if-missing"],
                       env={**env, "REVIEW_PASSWORD": "other-password"}, capture_output=True, text=True)
    assert r.returncode == 0 and "left as it is" in r.stdout  # ...except for scripts (the compose file)
    assert main(["users", "list", "--log", str(log)]) == 0
    port = _free_port()
    server = subprocess.Popen(run + ["review", "--log", str(log), "--package", str(line_log["package"]),
                                     "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline, health = time.time() + 30, None
        while time.time() < deadline and health is None:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read())
            except OSError:
                time.sleep(0.2)
        assert health == {"ok": True, "rescore": True}
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        r = client.post("/login", data={"user": "cli-lead", "password": "cli-password"})
        assert r.status_code == 303 and client.get("/api/parts").json()["total"] == _store(log).count()
    finally:
        server.terminate()
        server.wait(10)


def test_hostile_bodies_tokens_and_store_rows_get_answers_not_500s(client, log):
    """A body of 100k nested '[', a non-ASCII CSRF token (header or form field), a damaged failure row (boxes not
    JSON, files a list, score text) and a tally with a text count: each gets a 4xx or is shown as damaged;
    every other part's page still opens."""
    csrf = _login(client)
    part = _store(log).records(limit=1)[0]
    r = client.post(f"/api/parts/{part.id}/review", content=b"[" * 100_000, headers={"X-CSRF-Token": csrf,
                                                                                   "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post(f"/api/parts/{part.id}/review", json={"verdict": "unsure"},
                    headers={"X-CSRF-Token": "tökén".encode()})
    assert r.status_code == 403
    r = client.post("/admin/users", data={"csrf": "tökén", "action": "disable", "name": "nina"})
    assert r.status_code == 403
    db = sqlite3.connect(log / "failures.db")
    ids = [row[0] for row in db.execute("SELECT id FROM failures ORDER BY ts DESC, id DESC LIMIT 4")]
    db.execute("UPDATE failures SET boxes = 'not json' WHERE id = ?", (ids[0],))
    db.execute("UPDATE failures SET files = '[\"a\", \"b\"]' WHERE id = ?", (ids[1],))
    db.execute("UPDATE failures SET score = 'high' WHERE id = ?", (ids[2],))
    db.execute("INSERT INTO tallies (day, station, verdict, n) VALUES (?, 'line-a', 'pass', 'many')",
               (time.strftime("%Y-%m-%d"),))
    db.commit()
    db.close()
    queue = client.get("/")
    assert queue.status_code == 200 and queue.text.count("damaged record") == 3
    parts = client.get("/api/parts?limit=500")
    assert parts.status_code == 200
    damaged = {p["id"]: p["damaged"] for p in parts.json()["parts"] if p["damaged"]}
    assert set(damaged) == set(ids[:3]) and "JSON" in damaged[ids[0]] and "files" in damaged[ids[1]]
    for i in ids:
        page = client.get(f"/parts/{i}")
        assert page.status_code == 200 and (("Damaged record" in page.text) == (i in ids[:3]))
    assert client.get("/stats").status_code == 200 and client.get("/api/stats").status_code == 200


@pytest.mark.slow  # waits out real back-offs or kills processes: seconds on purpose
def test_parallel_guesses_on_one_account_queue_behind_its_back_off(tmp_path, monkeypatch):
    """16 wrong guesses at once from 16 addresses on an account already in back-off finished together (the
    waits ran in parallel); now they take one back-off each, one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from inspection.deploy.review import accounts as auth

    monkeypatch.setattr(auth, "ACCOUNT_DELAY_S", 0.25)
    accounts = auth.Accounts(tmp_path / "a.db")
    accounts.add_user("ana", "a long passphrase", "lead")
    for i in range(auth.ACCOUNT_SLOW_AFTER):
        with pytest.raises(auth.AuthError):
            accounts.login("ana", "wrong", f"10.0.0.{i}")

    def guess(i):
        with pytest.raises(auth.AuthError):
            accounts.login("ana", "wrong", f"10.0.1.{i}")
    t = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(guess, range(16)))
    assert time.perf_counter() - t >= 16 * 0.25


def test_forwarded_addresses_are_not_believed_unless_a_proxy_is_named(line_log, log):
    """A client on the station's own host rotating X-Forwarded-For used to look like a new address each time and
    never met the per-address hold; now the hold comes after 5 failures, whatever the header says."""
    with _station_process(log, line_log["package"]) as st:
        import httpx

        answers = [httpx.post(st.base + "/login", data={"user": LEAD[0], "password": "wrong-password"},
                              headers={"X-Forwarded-For": f"203.0.113.{i}"}, timeout=30).text for i in range(7)]
    assert "too many failed logins" in answers[-1]


def test_a_login_sent_from_another_sites_page_is_refused(client):
    """Login CSRF: a page elsewhere posts the station's login form with an account of its own choosing."""
    r = client.post("/login", data={"user": LEAD[0], "password": LEAD[1]}, follow_redirects=False,
                    headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "review_session" not in r.headers.get("set-cookie", "")
    r = client.post("/login", data={"user": LEAD[0], "password": LEAD[1]}, follow_redirects=False,
                    headers={"Origin": "http://testserver"})
    assert r.status_code == 303
