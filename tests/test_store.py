"""The failure log, on SQLite and on a real PostgreSQL server (same tests): records, paging, reviews, corrected
maps, quota, statistics, crash recovery, schema migration, concurrent writers."""
import shutil
import threading
import time

import cv2
import numpy as np
import pytest

from inspection.deploy.store.schema import FailureRecord, ReviewError
from inspection.deploy.store.sql import SQLiteStore


@pytest.fixture
def store(open_log):
    s = open_log("log")
    frame = np.full((60, 80, 3), 100, np.uint8)
    att = (np.random.default_rng(0).random((8, 10)) * 65535).astype(np.uint16)
    files = {"image": (".png", cv2.imencode(".png", frame)[1].tobytes()),
             "map": (".png", cv2.imencode(".png", att)[1].tobytes())}
    s.add(FailureRecord("p1", "line-1", time.time(), "v1", "fail", 0.93, "scratch", []), files)
    s.add(FailureRecord("p2", "line-1", time.time(), "v1", "error", None, None, []), {})
    return s


def _read(store, rel):
    return cv2.imread(str(store.folder / rel), cv2.IMREAD_UNCHANGED)


def test_reviews_keep_history_and_set_the_status(store):
    rid = store.records(part_id="p1")[0].id
    assert store.get(rid).review_status == "unreviewed"
    store.add_review(rid, "ana", "defect", "scratch", "clear scratch")
    store.add_review(rid, "ben", "false_alarm", comment="benign mark")
    history = store.reviews(rid)
    assert [(r.reviewer, r.verdict) for r in history] == [("ana", "defect"), ("ben", "false_alarm")]
    assert store.get(rid).review_status == "false_alarm"
    for bad, message in [(dict(verdict="maybe"), "verdict must be one of"), (dict(reviewer=" "), "reviewer"),
                         (dict(failure_id=999), "no logged part")]:
        args = {"failure_id": rid, "reviewer": "ana", "verdict": "defect", **bad}
        with pytest.raises(ReviewError, match=message):
            store.add_review(**args)


def test_two_reviewers_at_once_lose_neither(open_log, store):
    rid = store.records(part_id="p1")[0].id
    other = open_log("log")  # a second process's view
    barrier = threading.Barrier(2)

    def review(s, name):
        barrier.wait()
        for i in range(20):
            s.add_review(rid, name, "unsure", comment=str(i))
    threads = [threading.Thread(target=review, args=(s, n)) for s, n in ((store, "ana"), (other, "ben"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [r.reviewer for r in store.reviews(rid)]
    assert names.count("ana") == 20 and names.count("ben") == 20


def test_corrected_maps_at_map_or_frame_resolution_are_stored_at_both(store):
    rid = store.records(part_id="p1")[0].id
    small = np.zeros((8, 10), np.float32)
    small[2:4, 3:6] = 1.0
    store.add_review(rid, "ana", "defect", "scratch", corrected=small)
    files = store.reviews(rid)[-1].files
    assert _read(store, files["corrected"]).shape == (8, 10) and _read(store, files["corrected_full"]).shape == (60, 80)
    assert np.allclose(_read(store, files["corrected"]) / 65535, small, atol=1e-4)
    full = np.zeros((60, 80), np.float32)
    full[10:30, 20:40] = 0.8
    store.add_review(rid, "ben", "defect", "scratch", corrected=full)
    files = store.reviews(rid)[-1].files
    assert abs(_read(store, files["corrected_full"]).max() / 65535 - 0.8) < 1e-3
    with pytest.raises(ReviewError, match="expected 8x10 or 60x80"):
        store.add_review(rid, "ana", "defect", corrected=np.zeros((20, 20)))
    with pytest.raises(ReviewError, match="NaN"):
        store.add_review(rid, "ana", "defect", corrected=np.full((8, 10), np.nan))
    with pytest.raises(ReviewError, match="no attention map"):
        store.add_review(store.records(part_id="p2")[0].id, "ana", "defect", corrected=small)
    assert store.recover() == {"temporary": 0, "orphans": 0}  # review files are known to recovery
    assert len(store.reviews(rid)) == 2


def test_corrected_maps_of_a_model_with_a_roi_cover_its_crop(store):
    """A model that sees only a crop [x, y, w, h] of the frame: a frame-sized correction's model-resolution copy is
    the crop's, and a model-resolution correction lands in the crop of the frame-sized copy (0 outside)."""
    rid = store.records(part_id="p1")[0].id
    roi = (40, 20, 40, 32)  # the frame is 60x80; the model's 8x10 map covers x 40-80, y 20-52
    full = np.zeros((60, 80), np.float32)
    full[20:24, 40:44] = 1.0  # the crop's top-left cell
    full[0:10, 0:10] = 1.0   # outside the crop: the model never saw it
    store.add_review(rid, "ana", "defect", "scratch", corrected=full, roi=roi)
    small = _read(store, store.reviews(rid)[-1].files["corrected"]) / 65535
    assert small[0, 0] > 0.99 and np.isclose(small.sum(), 1.0, atol=1e-3)
    cell = np.zeros((8, 10), np.float32)
    cell[7, 9] = 1.0
    store.add_review(rid, "ana", "defect", "scratch", corrected=cell, roi=roi)
    big = _read(store, store.reviews(rid)[-1].files["corrected_full"]) / 65535
    ys, xs = np.nonzero(big > 0.5)
    assert ys.min() >= 44 and xs.min() >= 70 and ys.max() < 52 and xs.max() < 80 and big[:20].max() == 0


def test_quota_removes_a_settled_part_with_its_reviews_and_keeps_unsure_ones(open_log, tmp_path):
    s = open_log("q", quota_bytes=2500)
    att = cv2.imencode(".png", np.zeros((4, 4), np.uint16))[1].tobytes()
    a = s.add(FailureRecord("a", "s", 1.0, "v", "fail", 0.9, None, []),
              {"map": (".png", att), "x": (".bin", b"x" * 900)})
    b = s.add(FailureRecord("b", "s", 2.0, "v", "fail", 0.9, None, []), {"x": (".bin", b"x" * 1000)})
    s.add_review(a, "ana", "defect", corrected=np.ones((4, 4)))
    s.add_review(b, "ana", "unsure")
    s.add(FailureRecord("c", "s", 3.0, "v", "fail", 0.9, None, []), {"x": (".bin", b"x" * 1000)})
    assert [r.part_id for r in s.records()] == ["c", "b"] and s.reviews(a) == []
    assert len(list((tmp_path / "q").rglob("*.png"))) == 0  # the corrected maps went with their part


def test_reviewed_parts_export_to_a_dataset_the_trainer_reads(open_log, tmp_path):
    from inspection.core.layout import scan_dataset
    from inspection.deploy.store.to_dataset import export_reviewed
    from inspection.model.config import load_config
    from inspection.training.loader import InspectionDataset

    s = open_log("log")
    rng = np.random.default_rng(1)
    for i in range(10):
        frame = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        att = np.zeros((6, 8), np.uint16)
        rid = s.add(FailureRecord(f"p{i}", "line 1", time.time() + i, "v1", "fail", 0.9, "scratch", []),
                    {"image": (".png", cv2.imencode(".png", frame)[1].tobytes()),
                     "map": (".png", cv2.imencode(".png", att)[1].tobytes())})
        if i < 4:
            corrected = np.zeros((6, 8), np.float32)
            corrected[2:4, 2:5] = 1
            s.add_review(rid, "ana", "defect", "dent", corrected=corrected)
        elif i < 9:
            s.add_review(rid, "ana", "defect", "scratch")
            if i >= 7:
                s.add_review(rid, "ben", "false_alarm", comment="benign")  # the latest review decides
        else:
            s.add_review(rid, "ana", "unsure")
    out = tmp_path / "reviewed"
    counts = export_reviewed(s, out)
    assert counts == {"good": 2, "defect": 7, "corrected": 4, "skipped": {}}
    assert export_reviewed(s, out) == counts  # again: same files, nothing duplicated
    assert len(list(out.rglob("*.png"))) == 13
    (out / "good" / "extra.png").write_bytes((out / "good").glob("*.png").__next__().read_bytes())
    cfg = load_config(None, [f"data.root={out}", "data.image_size=[32, 32]"])
    manifest = scan_dataset(out, cfg.data)
    assert manifest.classes == ["good", "dent", "scratch"]
    dents = [it for it in manifest.items if it.defect_type == "dent"]
    assert len(dents) == 4 and all(it.corrected for it in dents)
    split = next(sp for sp in ("train", "val", "test") if any(it.corrected for it in manifest.split(sp)))
    ds = InspectionDataset(manifest, split, cfg.data)
    item = ds[next(i for i, it in enumerate(ds.items) if it.corrected)]
    assert item["has_target"] and float(item["target_map"].max()) > 0.5


def _add(s, part, station="line-1", ts=None, verdict="fail", score=0.9, defect_type="scratch"):
    return s.add(FailureRecord(part, station, ts or time.time(), "v1", verdict, score, defect_type, []),
                 {"x": (".bin", part.encode())})


def test_queries_page_filter_count_and_tally_alike_on_every_backend(open_log):
    s = open_log("q")
    t0 = time.mktime(time.strptime("2026-11-20 12:00", "%Y-%m-%d %H:%M"))
    ids = [_add(s, f"p{i}", station=f"line-{i % 2}", ts=t0 + i * 3600 * 8, score=i / 10,
                defect_type=("scratch", "hole")[i % 2]) for i in range(10)]  # 8 h apart: 4 days
    for part in ("same-ts-a", "same-ts-b"):  # equal timestamps: paging breaks ties by id
        _add(s, part, station="line-0", ts=t0, score=0.1)
    assert s.count() == 12 and s.stations() == ["line-0", "line-1"]
    pages, before = [], None
    while page := s.records(limit=5, before=before):
        pages += page
        before = (page[-1].ts, page[-1].id)
    assert [r.id for r in pages] == [r.id for r in s.records(limit=100)] and len(pages) == 12
    assert [r.part_id for r in s.records(station="line-1", score_min=0.5)] == ["p9", "p7", "p5"]
    assert s.count(defect_type="hole", ts_from=t0 + 1, ts_to=t0 + 3600 * 8 * 6) == 3  # p1, p3, p5
    mid = s.get(ids[5])
    assert s.neighbours(mid) == (ids[6], ids[4]) and s.neighbours(mid, station="line-1") == (ids[7], ids[3])
    assert s.neighbours(s.get(ids[9])) == (None, ids[8])
    s.add_review(ids[0], "ana", "defect")
    s.add_review(ids[1], "ana", "false_alarm")
    assert s.count_by_status() == {"unreviewed": 10, "confirmed": 1, "false_alarm": 1, "unsure": 0}
    assert s.count_by_status(station="line-0") == {"unreviewed": 6, "confirmed": 1, "false_alarm": 0, "unsure": 0}
    n, newest = s.reviews_since(0)
    assert n == 2 and newest > t0 and s.reviews_since(newest) == (0, newest)
    with pytest.raises(ValueError, match="score_min must be a number"):
        s.records(score_min="high")
    assert s.records(station="x' OR '1'='1") == []  # values are bound, never SQL text
    today = time.strftime("%Y-%m-%d")
    s.tally("line-0", {(today, "pass"): 90, (today, "fail"): 10})
    s.tally("line-0", {(today, "pass"): 100})
    row = next(r for r in s.daily(3650) if r["day"] == today and r["station"] == "line-0")
    assert row["inspected"] == 200 and row["fail_rate"] == pytest.approx(10 / 200)
    first_day = next(r for r in s.daily(3650) if r["day"] == "2026-11-20" and r["station"] == "line-0")
    assert first_day["logged"] == 3 and first_day["confirmed"] == 1  # p0 and the two tie-break parts
    assert s.used_bytes() == sum(len(r.part_id) for r in s.records(limit=100))


def test_recovery_removes_only_files_no_record_names(open_log):
    s = open_log("r")
    rid = _add(s, "kept")
    folder = (s.folder / s.get(rid).files["x"]).parent
    (folder / "orphan-x.bin").write_bytes(b"a crash between rename and commit")
    (folder / ".half.bin.tmp-123").write_bytes(b"a crash while writing")
    assert s.recover("line-1") == {"temporary": 1, "orphans": 1}
    assert (s.folder / s.get(rid).files["x"]).is_file() and len(list(folder.iterdir())) == 1


def _write_many(db, folder, station, n):
    from inspection.deploy.store.factory import open_store
    s = open_store(db, folder, fsync=False)
    for i in range(n):
        _add(s, f"{station}-{i}", station=station)
    s.close()


def test_writers_in_several_processes_lose_no_record(open_log):
    import multiprocessing

    s = open_log("shared")
    db = "" if open_log.backend == "sqlite" else s.url
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(db, s.folder, f"line-{k}", 60)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    records = s.records(limit=1000)
    assert len(records) == 240 and len({r.id for r in records}) == 240
    assert {r.part_id for r in records} == {f"line-{k}-{i}" for k in range(4) for i in range(60)}
    assert all((s.folder / r.files["x"]).read_bytes() == r.part_id.encode() for r in records)


def test_a_log_newer_than_the_program_is_refused(open_log):
    s = open_log("new")
    with s._transaction() as ex:
        ex("INSERT INTO schema_version (version) VALUES (?)", (99,))
    with pytest.raises(RuntimeError, match="schema is version 99, newer than this program"):
        open_log("new")


def test_a_log_from_before_versioning_is_migrated_in_place(tmp_path):
    import sqlite3

    from inspection.deploy.store.schema import MIGRATIONS

    old = sqlite3.connect(tmp_path / "failures.db")  # the first release's schema, one record in it
    old.executescript(MIGRATIONS[0][1].format(**SQLiteStore.DIALECT))
    old.execute("INSERT INTO failures (part_id, station, ts, model_version, verdict, score, boxes, files, bytes) "
                "VALUES ('p1', 'line-1', ?, 'v1', 'fail', 0.9, '[]', '{}', 0)", (time.time(),))
    old.commit()
    old.close()
    s = SQLiteStore(tmp_path / "failures.db", tmp_path)
    assert s.schema_version() == len(MIGRATIONS) and s.records()[0].part_id == "p1"
    assert s.daily(1)[0]["logged"] == 1  # the new per-day column was filled from the timestamps


def test_the_outbox_is_replayed_oldest_first_once_and_keeps_what_it_cannot_read(open_log, caplog):
    s = open_log("log")
    png = cv2.imencode(".png", np.full((6, 8), 7, np.uint8))[1].tobytes()
    records = [FailureRecord(f"q{i}", "line-2", 1000.0 + i, "v1", "fail", 0.9, None, [{"x": i}]) for i in range(3)]
    paths = [s.spool(r, {"image": (".png", png)}) for r in records]
    s.add(FailureRecord("q0", "line-2", 1000.0, "v1", "fail", 0.9, None, [{"x": 0}]), {"image": (".png", png)})
    (s.outbox / "line-2" / "zz-broken.json").write_text('{"record": ')  # a torn file from a dying disk
    assert s.spooled("line-2")[:3] == paths and s.spooled("line-1") == []
    assert s.replay("line-2") == 3  # q0 was committed before a crash left its outbox file: not written twice
    got = sorted(s.records(station="line-2"), key=lambda r: r.ts)
    assert [r.part_id for r in got] == ["q0", "q1", "q2"] and got[2].boxes == [{"x": 2}]
    assert _read(s, got[1].files["image"]).max() == 7
    assert s.spooled("line-2") == [] and (s.outbox / "line-2" / "zz-broken.bad").is_file()
    assert "zz-broken.json is unreadable" in caplog.text


def test_the_map_file_format_round_trips_and_reads_8_bit_and_color_maps():
    import cv2

    from inspection.core.mapfile import decode_map, encode_map

    att = np.linspace(0, 1, 12 * 20, dtype=np.float32).reshape(12, 20)
    back = decode_map(encode_map(att))
    assert back.dtype == np.float32 and back.shape == (12, 20) and np.abs(back - att).max() <= 0.5 / 65535 + 1e-7
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 2] = 255  # red in OpenCV's BGR: a brush painted in red
    assert np.all(decode_map(cv2.imencode(".png", rgb)[1].tobytes()) == 1.0)
    assert decode_map(b"not a png") is None


def test_recovery_and_writes_never_follow_a_symlinked_day_or_station_folder(open_log, tmp_path):
    """Someone with write access to the log folder points failures/<day>/<station> elsewhere: recovery deletes
    nothing there, a new record is not written through it (it waits, retried, nothing lost) and a review's
    corrected map is refused, not written outside."""
    s = open_log("sym")
    frame, att = np.full((60, 80, 3), 100, np.uint8), np.zeros((8, 10), np.uint16)
    rid = s.add(FailureRecord("kept", "line-1", time.time(), "v1", "fail", 0.93, "scratch", []),
                {"image": (".png", cv2.imencode(".png", frame)[1].tobytes()),
                 "map": (".png", cv2.imencode(".png", att)[1].tobytes())})
    day, station = s.get(rid).files["map"].split("/")[:2]
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("a.bin", "b.png", ".c.tmp-1"):
        (outside / name).write_bytes(b"not the log's")
    (s.folder / day / "line-9").symlink_to(outside, target_is_directory=True)   # a station folder → elsewhere
    (s.folder / "2026-01-01").symlink_to(outside, target_is_directory=True)     # a day folder → elsewhere
    (s.folder / "2026-01-02").mkdir()
    (s.folder / "2026-01-02" / "line-1").symlink_to(outside, target_is_directory=True)
    assert s.recover() == {"temporary": 0, "orphans": 0}
    assert sorted(p.name for p in outside.iterdir()) == [".c.tmp-1", "a.bin", "b.png"]
    from inspection.deploy.store.schema import StoreUnavailable
    with pytest.raises(StoreUnavailable, match="symlink"):
        _add(s, "through-link", station="line-9")
    assert sorted(p.name for p in outside.iterdir()) == [".c.tmp-1", "a.bin", "b.png"]
    # the review station's corrected map beside a part whose station folder became a link out of the log, the
    # map in it a link back to a real map inside (so that the map itself resolves inside the log folder)
    map_name = s.get(rid).files["map"].split("/")[2]
    (s.folder / day / "kept-copy").mkdir()
    shutil.move(str(s.folder / day / station), str(outside / "moved"))
    shutil.copy(outside / "moved" / map_name, s.folder / day / "kept-copy" / map_name)
    (outside / "moved" / map_name).unlink()
    (outside / "moved" / map_name).symlink_to(s.folder / day / "kept-copy" / map_name)
    (s.folder / day / station).symlink_to(outside / "moved", target_is_directory=True)
    before = sorted(p.name for p in (outside / "moved").iterdir())
    with pytest.raises(ReviewError, match="symlink"):
        s.add_review(rid, "ana", "defect", corrected=np.ones((8, 10), np.float32))
    assert sorted(p.name for p in (outside / "moved").iterdir()) == before


BATCH_WRITER = """
import sys, time
import numpy as np, cv2
from inspection.deploy.store.schema import FailureRecord
from inspection.deploy.store.sql import SQLiteStore
folder = sys.argv[1]
s = SQLiteStore(folder + "/failures.db", folder, fsync=True)
rng = np.random.default_rng(int(sys.argv[2]))
for b in range(10**6):
    items = []
    for k in range(10):
        image = cv2.imencode(".png", rng.integers(0, 255, (64, 64, 3), np.uint8))[1].tobytes()
        items.append((FailureRecord(f"{sys.argv[2]}-{b}-{k}", "line-1", time.time(), "v1", "fail", 0.9, None, []),
                      {"image": (".png", image), "map": (".png", image)}))
    s.add_many(items)
"""


@pytest.mark.slow  # waits out real back-offs or kills processes: seconds on purpose
def test_a_batch_of_records_is_in_the_log_whole_or_not_at_all_after_kill_9(tmp_path):
    """Five SIGKILLs of a process writing batches of 10 records with their files (one flush of the disk and one
    transaction per batch): after each, every batch in the log is whole, every record's files are there and
    complete, and after recovery no file is left without its record."""
    import signal
    import subprocess
    import sys

    from test_line import _count

    folder = tmp_path / "log"
    folder.mkdir()
    rng = np.random.default_rng(0)
    counts = [0]
    for run in range(5):
        proc = subprocess.Popen([sys.executable, "-c", BATCH_WRITER, str(folder), str(run)], stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and _count(folder / "failures.db") <= counts[-1]:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        s = SQLiteStore(folder / "failures.db", folder, fsync=False)
        records = s.records(limit=10**6)
        batches: dict[str, int] = {}
        for r in records:
            batches[r.part_id.rsplit("-", 1)[0]] = batches.get(r.part_id.rsplit("-", 1)[0], 0) + 1
            assert set(r.files) == {"image", "map"}
            for rel in r.files.values():
                assert cv2.imdecode(np.fromfile(folder / rel, np.uint8), cv2.IMREAD_UNCHANGED) is not None, rel
        assert set(batches.values()) == {10}, {b: n for b, n in batches.items() if n != 10}
        s.recover("line-1")
        on_disk = {p.relative_to(folder).as_posix() for p in folder.glob("*/line-1/*")}
        assert on_disk == {rel for r in records for rel in r.files.values()}
        s.close()
        counts.append(len(records))
    assert counts == sorted(counts) and counts[-1] > counts[1] > 0

