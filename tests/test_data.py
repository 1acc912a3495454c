import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from inspection.core.imageio import ImageError, read_image
from inspection.core.layout import DatasetError, scan_dataset
from inspection.training.loader import BalancedBatchSampler, InspectionDataset
from tests.conftest import tiny_config


def test_scan_mixed_formats_sizes_and_channels(tiny_dataset):
    cfg = tiny_config(tiny_dataset)
    m = scan_dataset(tiny_dataset, cfg.data)
    assert m.classes == ["good", "hole", "scratch", "stain"]
    assert len(m.items) == 36 + 24 and not m.skipped
    suffixes = {it.path.rsplit(".", 1)[1] for it in m.items}
    assert suffixes == {"png", "jpg"}
    assert len({(it.width, it.height) for it in m.items}) > 5
    assert all(it.mask for it in m.items if it.defect_type != "good")
    counts = m.counts()
    for split in ("train", "val", "test"):
        assert counts[split]["good"] > 0 and all(counts[split].get(t, 0) > 0 for t in ("hole", "scratch", "stain"))
    ds = InspectionDataset(m, "train", cfg.data, augment=True)
    sample = ds[0]
    assert sample["image"].shape == (3, 64, 64) and not sample["has_target"]


def test_split_is_deterministic_and_manifest_hash_stable(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset)
    a, b = scan_dataset(tiny_dataset, cfg.data), scan_dataset(tiny_dataset, cfg.data)
    assert [(i.path, i.split) for i in a.items] == [(i.path, i.split) for i in b.items]
    assert a.content_hash == b.content_hash
    a.save(tmp_path / "manifest.json")
    loaded = json.loads((tmp_path / "manifest.json").read_text())
    assert loaded["content_hash"] == a.content_hash and len(loaded["items"][0]["sha256"]) == 64
    other = scan_dataset(tiny_dataset, tiny_config(tiny_dataset, **{"data.seed": 7}).data)
    assert other.content_hash != a.content_hash


def test_content_change_changes_hash(dataset_copy):
    cfg = tiny_config(dataset_copy)
    before = scan_dataset(dataset_copy, cfg.data).content_hash
    victim = sorted((dataset_copy / "good").iterdir())[0]
    img = np.asarray(Image.open(victim)).copy()
    img[0, 0] = 255 - img[0, 0]
    Image.fromarray(img).save(victim)
    assert scan_dataset(dataset_copy, cfg.data).content_hash != before


def test_split_file_overrides(dataset_copy, tmp_path):
    cfg = tiny_config(dataset_copy)
    m = scan_dataset(dataset_copy, cfg.data)
    spec = {s: [it.path for it in m.items if it.split == s] for s in ("train", "val", "test")}
    spec["train"], spec["test"] = spec["test"], spec["train"]  # deliberately different from the automatic split
    path = tmp_path / "split.json"
    path.write_text(json.dumps(spec))
    m2 = scan_dataset(dataset_copy, tiny_config(dataset_copy, **{"data.split_file": str(path)}).data)
    assert sorted(it.path for it in m2.split("train")) == sorted(spec["train"])
    spec["val"].append("good/nope.png")
    path.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match="nope.png"):
        scan_dataset(dataset_copy, tiny_config(dataset_copy, **{"data.split_file": str(path)}).data)


def test_bad_images_are_skipped_and_counted(dataset_copy):
    good = sorted((dataset_copy / "good").iterdir())
    (dataset_copy / "good" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    jpg = next(p for p in good if p.suffix == ".jpg")
    (dataset_copy / "good" / "truncated.jpg").write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    (dataset_copy / "good" / "empty.png").write_bytes(b"")
    (dataset_copy / "good" / "notes.txt").write_text("operator notes")
    m = scan_dataset(dataset_copy, tiny_config(dataset_copy).data)
    reasons = dict(m.skipped)
    assert len(m.skipped) == 4 and len(m.items) == 60
    assert "corrupt" in reasons[str(dataset_copy / "good" / "corrupt.png")] or "not a readable image" in \
        reasons[str(dataset_copy / "good" / "corrupt.png")]
    assert "truncated" in reasons[str(dataset_copy / "good" / "truncated.jpg")]
    assert "empty" in reasons[str(dataset_copy / "good" / "empty.png")]
    assert "not an image file" in reasons[str(dataset_copy / "good" / "notes.txt")]


def test_read_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageError, match="x.png"):
        read_image(bad)
    with pytest.raises(ImageError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(deep)  # 16-bit gray
    img = read_image(deep)
    assert img.shape == (16, 16, 3) and img.max() == pytest.approx(40000 / 65535, abs=1e-4)


def test_dataset_structure_errors(tmp_path, dataset_copy):
    cfg = tiny_config(tmp_path).data
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "missing", cfg)
    (tmp_path / "defect" / "scratch").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no good/ folder"):
        scan_dataset(tmp_path, cfg)
    (tmp_path / "good").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "good" / "a.png")
    with pytest.raises(DatasetError, match="no readable images"):
        scan_dataset(tmp_path, cfg)
    for p in (dataset_copy / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="good/ holds no readable images"):
        scan_dataset(dataset_copy, cfg)


def test_too_few_images_of_a_class(dataset_copy):
    for p in sorted((dataset_copy / "defect" / "hole").iterdir())[2:]:
        p.unlink()
    with pytest.raises(DatasetError, match="'hole' has 2 images"):
        scan_dataset(dataset_copy, tiny_config(dataset_copy).data)
    m = scan_dataset(dataset_copy, tiny_config(dataset_copy, **{"data.label_mode": "binary"}).data)
    assert m.classes == ["good", "defect"]


def test_mask_size_mismatch_is_an_error(dataset_copy):
    mask = sorted((dataset_copy / "masks" / "hole").iterdir())[0]
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match=f"{mask.name}: mask is 12x10 px"):
        scan_dataset(dataset_copy, tiny_config(dataset_copy).data)


def test_corrected_maps_are_loaded_and_augmented_with_the_image(dataset_copy):
    item = sorted((dataset_copy / "defect" / "stain").iterdir())[0]
    target = dataset_copy / "corrected" / "defect" / "stain" / (item.stem + ".npy")
    target.parent.mkdir(parents=True)
    amap = np.zeros((8, 8), np.float32)
    amap[:, :4] = 1.0  # left half
    np.save(target, amap)
    cfg = tiny_config(dataset_copy)
    m = scan_dataset(dataset_copy, cfg.data)
    it = next(i for i in m.items if i.path.endswith(item.name))
    assert it.corrected == f"corrected/defect/stain/{item.stem}.npy"
    ds = InspectionDataset(m, it.split, cfg.data)
    s = ds[ds.items.index(it)]
    assert s["has_target"] and s["target_map"].shape == (64, 64)
    assert s["target_map"][:, :28].mean() > 0.95 and s["target_map"][:, 36:].mean() < 0.05


def test_balanced_batches_hold_both_kinds():
    sampler = BalancedBatchSampler([True] * 90 + [False] * 10, batch_size=8, steps=20, seed=0)
    batches = list(sampler)
    assert len(batches) == 20
    for b in batches:
        assert sum(i < 90 for i in b) == 4 and sum(i >= 90 for i in b) == 4
    assert list(sampler) != batches  # reshuffled every epoch
    with pytest.raises(DatasetError):
        BalancedBatchSampler([True] * 5, 4, 1)


def test_mask_supervision_picks_masked_defect_images_as_map_targets(dataset_copy):
    import shutil

    from inspection.core.layout import mask_targets

    cfg = tiny_config(dataset_copy)
    m = scan_dataset(dataset_copy, cfg.data)
    picked = mask_targets(m, 3, seed=0)
    assert len(picked) == 3 and picked == mask_targets(m, 3, seed=0) != mask_targets(m, 3, seed=1)
    train = {it.path: it for it in m.split("train")}
    assert all(p in train and train[p].defect_type != "good" and train[p].mask for p in picked)
    assert mask_targets(m, 0) == set()
    assert len(mask_targets(m, 1000)) == sum(1 for it in train.values() if it.mask)  # more than exist: all
    ds = InspectionDataset(m, "train", cfg.data, mask_targets=picked)
    with_target = [i for i in range(len(ds)) if ds[i]["has_target"]]
    assert sorted(ds.items[i].path for i in with_target) == sorted(picked)
    t = ds[with_target[0]]["target_map"]
    assert t.shape == (64, 64) and t.max() == 1 and t.min() == 0  # the mask, at the model's input size

    shutil.rmtree(dataset_copy / "masks")
    with pytest.raises(DatasetError, match=r"train.mask_supervision=5: .* no defect image with a mask"):
        mask_targets(scan_dataset(dataset_copy, cfg.data), 5)


def test_auto_input_size_follows_the_parts_shape():
    from types import SimpleNamespace as NS

    from inspection.core.preprocess import input_size
    from inspection.model.config import load_config

    tall = [NS(height=1260, width=500), NS(height=1240, width=500), NS(height=1280, width=500)]
    cfg = load_config(None).data
    assert cfg.image_size == "auto" and input_size(cfg, tall) == (320, 128)
    assert input_size(cfg, [NS(height=600, width=600)] * 3) == (192, 192)  # square parts
    assert input_size(cfg, [NS(height=64, width=64)]) == (64, 64)  # never larger than the parts
    assert input_size(load_config(None, ["data.max_pixels=25600"]).data, tall) == (256, 96)
    assert input_size(load_config(None, ["data.max_pixels=92160"]).data, tall) == (480, 192)
    wide_roi = load_config(None, ["data.roi=[0, 0, 450, 150]"]).data  # the ROI crop, not the frame, counts
    assert input_size(wide_roi, tall) == (128, 352)
    assert input_size(load_config(None, ["data.image_size=[64, 128]"]).data, tall) == (64, 128)
    with pytest.raises(ValueError, match="image_size"):
        load_config(None, ["data.image_size=big"])


def test_scale_note_says_what_a_map_cell_covers():
    from types import SimpleNamespace as NS

    from inspection.core.preprocess import scale_note
    from inspection.model.config import load_config

    cfg = load_config(None).data
    note = scale_note(cfg, [NS(height=512, width=512)] * 3, (192, 192), 8)
    assert "shrunk 2.7x / 2.7x" in note and "about 21x21 px" in note and "data.max_pixels" in note
    near = scale_note(cfg, [NS(height=200, width=200)], (192, 192), 8)
    assert "about 8x8 px" in near and "data.max_pixels" not in near  # hardly shrunk: no hint
    roi = load_config(None, ["data.roi=[0, 0, 1024, 256]"]).data  # the ROI crop counts, per side
    assert "shrunk 4.0x / 8.0x" in scale_note(roi, [NS(height=300, width=4096)], (64, 128), 8)


def test_training_keeps_the_size_auto_chose(tiny_dataset, tmp_path):
    from inspection.model.abn import load_checkpoint
    from inspection.model.config import load_config
    from inspection.training.train import train

    cfg = tiny_config(tiny_dataset, **{"data.image_size": "auto", "data.roi": "[0, 0, 32, 96]", "train.epochs": 1})
    manifest = scan_dataset(tiny_dataset, cfg.data)
    best = train(cfg, manifest, tmp_path / "run", progress=False)
    model, saved, _ = load_checkpoint(best)
    assert tuple(saved.data.image_size) == (96, 32)  # tall crops: 32 wide, 72-96 tall
    assert tuple(load_config(tmp_path / "run" / "config.yaml").data.image_size) == (96, 32)
    assert InspectionDataset(manifest, "val", cfg.data)[0]["image"].shape == (3, 96, 32)


def test_a_run_that_does_not_learn_trains_again_at_larger_inputs_and_keeps_the_best(tiny_dataset, tmp_path,
                                                                                   monkeypatch):
    """data.retry_below: under it, a run at the next cap of data.retry_max_pixels, and the next only while the last
    one gained; the best by validation AUROC is kept in the run folder, the others in their input_<HxW> folders,
    and a resume (even after a kill while moving) trains nothing. The validation AUROC each run reaches is set
    here, so that each branch is taken for sure."""
    from inspection.model.abn import load_checkpoint
    from inspection.model.config import load_config
    from inspection.training import train as training

    reached = {}
    monkeypatch.setattr(training, "_best_val_auroc", lambda folder: reached[Path(folder).name])
    cfg = tiny_config(tiny_dataset, **{"data.image_size": "auto", "data.max_pixels": 1024,
                                       "data.retry_max_pixels": "[4096, 9216]", "train.epochs": 1})
    manifest = scan_dataset(tiny_dataset, cfg.data)
    size = lambda best: tuple(load_checkpoint(best)[1].data.image_size)  # noqa: E731
    run = tmp_path / "run"

    reached.update(run=0.97)  # at retry_below (0.95) or above: one run
    assert size(training.train(cfg, manifest, run, progress=False)) == (32, 32)
    assert not list(run.glob("input_*")) and not (run / "input_search.json").exists()

    reached.update(run=0.6, input_64x64=0.5)  # the larger input does no better: the first stays, no third run
    best = training.train(cfg, manifest, run, resume=False, progress=False)
    assert size(best) == (32, 32) and size(run / "input_64x64" / "best.pt") == (64, 64)
    assert not (run / "input_96x96").exists()
    record = json.loads((run / "input_search.json").read_text())
    assert record["kept"] == "32x32" and [t["size"] for t in record["tried"]] == ["32x32", "64x64"]

    reached.update(run=0.6, input_64x64=0.9, input_96x96=0.8)  # the second gains and is under 0.95: a third,
    moves = []                                                  # which does not beat the second
    real_move = training._move_run

    def killed_after_one(src, dst):
        moves.append(src)
        if len(moves) == 2:
            raise KeyboardInterrupt  # killed between the two moves
        real_move(src, dst)
    monkeypatch.setattr(training, "_move_run", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, manifest, run, resume=False, progress=False)
    monkeypatch.setattr(training, "_move_run", real_move)
    best = training.train(cfg, manifest, run, progress=False)  # resumed: finishes the moves only
    record = json.loads((run / "input_search.json").read_text())
    assert record["kept"] == "64x64" and record["done"]
    assert [t["size"] for t in record["tried"]] == ["32x32", "64x64", "96x96"]
    assert size(best) == (64, 64) and size(run / "input_32x32" / "best.pt") == (32, 32)
    assert size(run / "input_96x96" / "best.pt") == (96, 96)
    assert tuple(load_config(run / "config.yaml").data.image_size) == (64, 64)
    assert not (run / "input_64x64" / "best.pt").exists()
    stamp = best.stat().st_mtime_ns
    assert training.train(cfg, manifest, run, progress=False) == best and best.stat().st_mtime_ns == stamp


def test_a_search_record_of_the_earlier_two_run_form_is_finished_on_resume(tmp_path):
    """input_search.json as earlier releases wrote it (kept "larger", killed before the moves): a resume moves the
    first run to first_input and the larger one up, as those releases did."""
    from inspection.training import train as training

    run = tmp_path / "run"
    (run / "larger_input").mkdir(parents=True)
    (run / "best.pt").write_text("first")
    (run / "larger_input" / "best.pt").write_text("larger")
    (run / "input_search.json").write_text(json.dumps({"tried": [{"size": "32x32", "val_auroc": 0.5},
                                                                 {"size": "64x64", "val_auroc": 0.9}],
                                                       "kept": "larger"}))
    assert training.train(None, None, run, progress=False) == run / "best.pt"
    assert (run / "best.pt").read_text() == "larger" and (run / "first_input" / "best.pt").read_text() == "first"


def test_the_retry_benchmark_follows_the_rule_training_uses(tmp_path):
    """benchmarks/input_retry.py on hand-made run folders: a set at 0.95 or above stops at the first run, one
    whose second run loses stops there, one that gains goes on and keeps its best run with that run's test
    figures; a further run the rule asks for but nobody trained is reported as not measured."""
    import subprocess
    import sys

    def run(folder, val):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "history.json").write_text(json.dumps([{"val_auroc": 0.4}, {"val_auroc": val}]))
    for name, vals in {"ok": [0.97], "lose": [0.8, 0.7, 0.99], "gain": [0.5, 0.8, 0.9]}.items():
        for step, val in enumerate(vals):
            run(f"{name}{step}/r-s0", val)
    run("open0/r-s0", 0.5)
    metrics = {"image": {"auroc": 0.9}, "box@0.3": {"f1": 0.6}, "box@0.1": {"f1": 0.7}, "box@0.5": {"f1": 0.3},
               "pixel_auroc": 0.95}
    (tmp_path / "gain2.json").write_text(json.dumps({"runs": [{"seed": 0, "train_s": 5.0, "metrics": metrics}]}))
    args = [f"--first={n}={tmp_path}/{n}0/r-s{{seed}}" for n in ("ok", "lose", "gain", "open")]
    args += [f"--retry={n}={tmp_path}/{n}{k}/r-s{{seed}}" for n in ("ok", "lose", "gain", "open") for k in (1, 2)]
    args += [f"--retry-results=gain={tmp_path}/gain1.json", f"--retry-results=gain={tmp_path}/gain2.json"]
    (tmp_path / "gain1.json").write_text(json.dumps({"runs": []}))
    out = tmp_path / "retry.json"
    subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "input_retry.py"), *args,
                    "--seeds", "0", "--out", str(out)], check=True, capture_output=True)
    sets = json.loads(out.read_text())["sets"]
    assert [len(sets[n][0]["tried"]) for n in ("ok", "lose", "gain")] == [1, 2, 3]
    assert [sets[n][0]["kept"] for n in ("ok", "lose", "gain")] == [0, 0, 2]
    assert sets["gain"][0]["test"]["box F1@0.3"] == 0.6 and "test" not in sets["lose"][0]
    assert sets["open"][0]["not_measured"].endswith("open1/r-s0") and "test" not in sets["open"][0]


def test_retry_caps_take_one_number_or_a_list_and_name_the_field_when_wrong():
    from inspection.model.config import DataConfig

    assert DataConfig(retry_max_pixels=65536).retry_max_pixels == [65536]
    assert DataConfig().retry_max_pixels == [65536, 147456]
    with pytest.raises(ValueError, match="retry_max_pixels"):
        DataConfig(retry_max_pixels=[65536, 12])


def test_image_headers_give_the_size_before_decoding():
    """PNG, JPEG (with an EXIF-like block before the frame header), BMP and TIFF of both byte orders: the size
    from the header alone; an image declaring more than the pixel limit is refused by every reader."""
    import struct

    from inspection.core.imageio import (
        ImageError,
        check_pixels,
        decode_image,
        header_size,
    )

    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".tif"):
        data = cv2.imencode(ext, img)[1].tobytes()
        assert header_size(data) == (53, 37), ext
        assert header_size(cv2.imencode(ext, img[:, :, 0])[1].tobytes()) == (53, 37), ext
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 30002) + bytes(30000)
    assert header_size(jpg[:2] + app1 + jpg[2:]) == (53, 37)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="TIFF")  # PIL writes little-endian; big-endian below by hand
    assert header_size(buf.getvalue()) == (53, 37)
    be = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) + struct.pack(">HHII", 256, 4, 1, 70000) + \
        struct.pack(">HHIHH", 257, 3, 1, 900, 0) + bytes(4)
    assert header_size(be) == (70000, 900)
    for other in (b"not an image", b""):
        with pytest.raises(ImageError, match="not a readable image of an accepted format"):
            header_size(other)
    big = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
    big = big[:16] + struct.pack(">II", 30000, 30000) + big[24:]  # the header says 30000x30000
    with pytest.raises(ImageError, match="30000x30000"):
        check_pixels(big, "bomb.png")
    with pytest.raises(ImageError, match="30000x30000"):
        decode_image(big, "bomb.png")


def test_pasted_defects_change_the_image_only_inside_their_mask():
    import random

    import torch

    from inspection.training.pastes import paste_defects

    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 48, 80, generator=g) * 0.5 + 0.25
    for seed in range(20):
        out, mask = paste_defects(image, random.Random(seed))
        assert out.shape == image.shape and mask.shape == (48, 80) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum() >= 1 and 0 <= out.min() and out.max() <= 1
        changed = (out != image).any(0)
        assert not changed[mask == 0].any()  # nothing outside the pastes moves
        assert changed[mask == 1].float().mean() > 0.5  # and they show: darker or brighter than the surface
        assert mask.sum() <= 3 * math.pi * (48 / 12 + 1) ** 2  # at most 3 ellipses, half-axes <= shorter side / 12
    again, mask2 = paste_defects(image, random.Random(3))
    assert torch.equal(again, paste_defects(image, random.Random(3))[0])  # the seed decides


def test_synthetic_defects_go_to_good_training_images_with_their_masks_as_targets(dataset_copy):
    cfg = tiny_config(dataset_copy)
    m = scan_dataset(dataset_copy, cfg.data)
    ds = InspectionDataset(m, "train", cfg.data, augment=True, synthetic=1.0)
    items = [ds[i] for i in range(len(ds))]
    good = [x for x in items if x["label"] == 0]
    assert good and all(x["synthetic"] and x["has_target"] and x["target_map"].max() == 1 for x in good)
    assert not any(x["synthetic"] or x["has_target"] for x in items if x["label"] != 0)
    plain = InspectionDataset(m, "train", cfg.data, augment=True)
    assert not any(plain[i]["synthetic"] or plain[i]["has_target"] for i in range(len(plain)))
    val = InspectionDataset(m, "val", cfg.data, synthetic=1.0)  # never on evaluation splits (no augmentation)
    assert not any(val[i]["synthetic"] for i in range(len(val)))
