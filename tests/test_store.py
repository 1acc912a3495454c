"""Reviews in the failure log: history kept, status follows the latest review, corrected maps checked and stored."""
import threading
import time

import cv2
import numpy as np
import pytest

from deploy.store import FailureRecord, ReviewError, SQLiteStore


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
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


def test_two_reviewers_at_once_lose_neither(tmp_path, store):
    rid = store.records(part_id="p1")[0].id
    other = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)  # a second process's view
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


def test_quota_removes_a_settled_part_with_its_reviews_and_keeps_unsure_ones(tmp_path):
    s = SQLiteStore(tmp_path / "q.db", tmp_path / "q", quota_bytes=2500, fsync=False)
    att = cv2.imencode(".png", np.zeros((4, 4), np.uint16))[1].tobytes()
    a = s.add(FailureRecord("a", "s", 1.0, "v", "fail", 0.9, None, []),
              {"map": (".png", att), "x": (".bin", b"x" * 900)})
    b = s.add(FailureRecord("b", "s", 2.0, "v", "fail", 0.9, None, []), {"x": (".bin", b"x" * 1000)})
    s.add_review(a, "ana", "defect", corrected=np.ones((4, 4)))
    s.add_review(b, "ana", "unsure")
    s.add(FailureRecord("c", "s", 3.0, "v", "fail", 0.9, None, []), {"x": (".bin", b"x" * 1000)})
    assert [r.part_id for r in s.records()] == ["c", "b"] and s.reviews(a) == []
    assert len(list((tmp_path / "q").rglob("*.png"))) == 0  # the corrected maps went with their part


def test_reviewed_parts_export_to_a_dataset_the_trainer_reads(tmp_path):
    from deploy.reviewed import export_reviewed
    from inspection.config import load_config
    from inspection.data import InspectionDataset, scan_dataset

    s = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
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
