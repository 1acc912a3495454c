import numpy as np
import pytest

from inspection.boxes import attention_to_boxes, mask_to_boxes, upsample_attention
from inspection.preprocess import prepare


def _map():
    att = np.zeros((8, 8), np.float32)
    att[2:4, 4:6] = 1.0   # 2x2 cells
    att[5:7, 0:2] = 1.0   # a second 2x2 block
    return att


def test_boxes_exact_in_full_frame():
    # 8x8 map over an 80x160 (HxW) frame: cell = 10 rows x 20 cols; bilinear upsampling crosses 0.5 at cell edges
    boxes = attention_to_boxes(_map(), frame_hw=(80, 160), threshold=0.5)
    assert [b.xyxy for b in boxes] == [(80, 20, 120, 40), (0, 50, 40, 70)]
    assert [b.score for b in boxes] == [pytest.approx(1.0)] * 2
    assert all(700 < b.area <= 800 for b in boxes)  # a 40x20 box, corners rounded by bilinear upsampling


def test_boxes_exact_after_roi_crop_and_resize():
    # the model saw the ROI x=30, y=50, 160x80 of a 300x400 frame, resized to its input: boxes land in frame pixels
    boxes = attention_to_boxes(_map(), frame_hw=(300, 400), threshold=0.5, roi=(30, 50, 160, 80))
    assert [b.xyxy for b in boxes] == [(110, 70, 150, 90), (30, 100, 70, 120)]


def test_min_area_and_threshold():
    att = _map()
    att[6, 7] = 1.0  # a single cell: a component of about 200 px
    boxes = attention_to_boxes(att, frame_hw=(80, 160), threshold=0.5, min_area=400)
    assert [b.xyxy for b in boxes] == [(80, 20, 120, 40), (0, 50, 40, 70)]
    assert len(attention_to_boxes(att, frame_hw=(80, 160), threshold=0.5)) == 3
    # a higher level shrinks the boxes: pixel y of a 10-px cell has source (y + 0.5) / 10 - 0.5, and the ramp
    # outside block rows 2..3 reaches 0.95 at source 1.95 and 3.05 -> rows 24..35; likewise for the columns
    tight = attention_to_boxes(_map(), frame_hw=(80, 160), threshold=0.95)
    assert [b.xyxy for b in tight] == [(89, 24, 111, 36), (0, 54, 31, 66)]
    with pytest.raises(ValueError, match="2-D"):
        attention_to_boxes(np.zeros((1, 8, 8)), frame_hw=(8, 8))


def test_roundtrip_through_preprocess_geometry():
    # a bright square in a frame, cropped + resized as the model input, found back at its frame position
    frame = np.zeros((240, 320, 3), np.float32)
    frame[100:140, 200:260] = 1.0
    roi = (40, 20, 256, 192)
    x = prepare(frame, (48, 64), roi)          # what the model sees
    att = x[..., 0]                            # pretend attention = the bright square at input resolution
    boxes = attention_to_boxes(att, frame.shape[:2], threshold=0.5, roi=roi)
    assert len(boxes) == 1
    assert np.allclose(boxes[0].xyxy, (200, 100, 260, 140), atol=4)


def test_upsample_and_mask_boxes():
    full = upsample_attention(_map(), (300, 400), roi=(30, 50, 160, 80))
    assert full.shape == (300, 400) and full[:50].max() == 0 and full[:, 190:].max() == 0 and full[80, 130] > 0.99
    mask = np.zeros((50, 60), bool)
    mask[5:10, 7:9] = True
    mask[30:31, 40:50] = True
    assert sorted(b.xyxy for b in mask_to_boxes(mask)) == [(7, 5, 9, 10), (40, 30, 50, 31)]
