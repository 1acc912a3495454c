import numpy as np
import pytest

from inspection.core.boxes import attention_to_boxes, mask_to_boxes, upsample_attention
from inspection.core.preprocess import prepare


def _map():
    att = np.zeros((8, 8), np.float32)
    att[2:4, 4:6] = 1.0   # 2x2 cells
    att[5:7, 0:2] = 1.0   # a second 2x2 block
    return att


def test_boxes_exact_in_full_frame():
    # 8x8 map over an 80x160 (HxW) frame: cell = 10 rows x 20 cols; bilinear upsampling crosses 0.5 at cell edges
    boxes = attention_to_boxes(_map(), frame_hw=(80, 160), threshold=0.5, min_area=0)
    assert [b.xyxy for b in boxes] == [(80, 20, 120, 40), (0, 50, 40, 70)]
    assert [b.score for b in boxes] == [pytest.approx(1.0)] * 2
    assert all(700 < b.area <= 800 for b in boxes)  # a 40x20 box, corners rounded by bilinear upsampling


def test_boxes_exact_after_roi_crop_and_resize():
    # the model saw the ROI x=30, y=50, 160x80 of a 300x400 frame, resized to its input: boxes land in frame pixels
    boxes = attention_to_boxes(_map(), frame_hw=(300, 400), threshold=0.5, roi=(30, 50, 160, 80), min_area=0)
    assert [b.xyxy for b in boxes] == [(110, 70, 150, 90), (30, 100, 70, 120)]


def test_min_area_and_threshold():
    att = _map()
    att[6, 7] = 1.0  # a single cell: a component of about 200 px
    boxes = attention_to_boxes(att, frame_hw=(80, 160), threshold=0.5, min_area=400)
    assert [b.xyxy for b in boxes] == [(80, 20, 120, 40), (0, 50, 40, 70)]
    assert len(attention_to_boxes(att, frame_hw=(80, 160), threshold=0.5, min_area=0)) == 3
    # a higher level shrinks the boxes: pixel y of a 10-px cell has source (y + 0.5) / 10 - 0.5, and the ramp
    # outside block rows 2..3 reaches 0.95 at source 1.95 and 3.05 -> rows 24..35; likewise for the columns
    tight = attention_to_boxes(_map(), frame_hw=(80, 160), threshold=0.95, min_area=0)
    assert [b.xyxy for b in tight] == [(89, 24, 111, 36), (0, 54, 31, 66)]
    with pytest.raises(ValueError, match="2-D"):
        attention_to_boxes(np.zeros((1, 8, 8)), frame_hw=(8, 8), min_area=0)


def test_roundtrip_through_preprocess_geometry():
    # a bright square in a frame, cropped + resized as the model input, found back at its frame position
    frame = np.zeros((240, 320, 3), np.float32)
    frame[100:140, 200:260] = 1.0
    roi = (40, 20, 256, 192)
    x = prepare(frame, (48, 64), roi)          # what the model sees
    att = x[..., 0]                            # pretend attention = the bright square at input resolution
    boxes = attention_to_boxes(att, frame.shape[:2], threshold=0.5, roi=roi, min_area=0)
    assert len(boxes) == 1
    assert np.allclose(boxes[0].xyxy, (200, 100, 260, 140), atol=4)


def test_upsample_and_mask_boxes():
    full = upsample_attention(_map(), (300, 400), roi=(30, 50, 160, 80))
    assert full.shape == (300, 400) and full[:50].max() == 0 and full[:, 190:].max() == 0 and full[80, 130] > 0.99
    mask = np.zeros((50, 60), bool)
    mask[5:10, 7:9] = True
    mask[30:31, 40:50] = True
    assert sorted(b.xyxy for b in mask_to_boxes(mask)) == [(7, 5, 9, 10), (40, 30, 50, 31)]


def _soft_map():
    """A 10x20 map shown 1:1 on the ROI (x=5, y=10, 20x10) of a 30x40 frame: no interpolation, exact pixels."""
    att = np.zeros((10, 20), np.float32)
    att[2:5, 2:8] = 0.4    # the foot of a blob ...
    att[3, 4:6] = 0.9      # ... and its tip
    att[7:9, 12:15] = 0.45  # a weak blob: no cell reaches the box level
    return att


def test_hysteresis_grows_boxes_from_the_tip_to_the_foot_and_drops_weak_blobs():
    roi = (5, 10, 20, 10)
    tip = attention_to_boxes(_soft_map(), (30, 40), threshold=0.8, roi=roi, min_area=0)
    assert [(b.xyxy, b.area) for b in tip] == [((9, 13, 11, 14), 2)]
    grown = attention_to_boxes(_soft_map(), (30, 40), threshold=0.8, roi=roi, low=0.5, min_area=0)
    assert [(b.xyxy, b.area, b.score) for b in grown] == [((7, 12, 13, 15), 18, pytest.approx(0.9))]
    # at the low level alone the weak blob would be a box too; hysteresis keeps only blobs with a tip
    assert len(attention_to_boxes(_soft_map(), (30, 40), threshold=0.4, roi=roi, min_area=0)) == 2
    with pytest.raises(ValueError, match="low"):
        attention_to_boxes(_soft_map(), (30, 40), threshold=0.8, low=1.5, min_area=0)


def test_nearby_regions_merge_into_one_box():
    att = np.zeros((10, 20), np.float32)
    att[4:6, 2:6] = 0.9    # a crack the map breaks into two beads, 2 px apart ...
    att[5:7, 8:12] = 0.7
    att[4, 18:20] = 0.6    # ... and a separate mark 6 px further
    apart = attention_to_boxes(att, (10, 20), threshold=0.5, area_share=0, min_area=0)
    assert [b.xyxy for b in apart] == [(2, 4, 6, 6), (8, 5, 12, 7), (18, 4, 20, 5)]
    # merge = 0.1 of the longer side (20 px) = 2 px: the beads join, the mark 6 px away stays apart
    merged = attention_to_boxes(att, (10, 20), threshold=0.5, merge=0.1, area_share=0, min_area=0)
    assert [(b.xyxy, b.area, b.score) for b in merged] == [((2, 4, 12, 7), 16, pytest.approx(0.9)),
                                                          ((18, 4, 20, 5), 2, pytest.approx(0.6))]
    mean = attention_to_boxes(att, (10, 20), threshold=0.5, merge=0.1, score="mean", area_share=0, min_area=0)
    assert mean[0].score == pytest.approx((8 * 0.9 + 8 * 0.7) / 16)
    # merged areas count for min_area: the beads (8 px each) pass 10 px together, the mark does not
    assert [b.xyxy for b in attention_to_boxes(att, (10, 20), threshold=0.5, merge=0.1, min_area=10,
                                               area_share=0)] == [(2, 4, 12, 7)]


def test_relative_level_boxes_each_region_near_its_own_peak():
    att = np.zeros((12, 24), np.float32)
    att[2:9, 2:9] = 0.3     # a soft blob around a small defect ...
    att[4:7, 4:7] = 0.6
    att[5, 5] = 0.9         # ... peaking on it
    att[3:6, 14:22] = 0.5   # a weaker, flat region
    att[4, 15] = 0.55
    whole = attention_to_boxes(att, (12, 24), threshold=0.25, min_area=0)
    assert [b.xyxy for b in whole] == [(2, 2, 9, 9), (14, 3, 22, 6)]
    # log-odds: foot 0.25 -> -1.10, blob peak 0.9 -> 2.20, plateau tip 0.55 -> 0.20. At 0.4 of the way the
    # blob is boxed at 0.555 (its 0.6 core), the plateau at 0.359 (whole); areas stay the regions'
    tight = attention_to_boxes(att, (12, 24), threshold=0.25, relative=0.4, min_area=0)
    assert [(b.xyxy, b.area) for b in tight] == [((4, 4, 7, 7), 49), ((14, 3, 22, 6), 24)]
    # 0.95 of the way: 0.884 for the blob (its peak cell), 0.534 for the plateau (its tip)
    peaks = attention_to_boxes(att, (12, 24), threshold=0.25, relative=0.95, min_area=0)
    assert [b.xyxy for b in peaks] == [(5, 5, 6, 6), (15, 4, 16, 5)]
    # a saturated blob (0.9998 around a 0.99998 peak) is still boxed at its peak in log-odds (8.5 vs 10.8)
    sat = np.zeros((12, 24), np.float32)
    sat[3:8, 3:8], sat[5, 5] = 0.9998, 0.99998
    saturated = attention_to_boxes(sat, (12, 24), threshold=0.5, relative=0.9, min_area=0)
    assert [b.xyxy for b in saturated] == [(5, 5, 6, 6)]
    with pytest.raises(ValueError, match="relative"):
        attention_to_boxes(att, (12, 24), threshold=0.25, relative=1.0, min_area=0)


def test_a_faint_blob_beside_a_strong_defect_is_not_a_second_defect():
    from inspection.core.boxes import BoxRule

    att = np.zeros((10, 20), np.float32)
    att[3:6, 4:8] = 0.95   # the defect
    att[8, 15:17] = 0.55   # a faint blob: over the threshold, but far under the defect's peak
    both = attention_to_boxes(att, (10, 20), threshold=0.5, area_share=0, min_area=0)
    assert [b.xyxy for b in both] == [(4, 3, 8, 6), (15, 8, 17, 9)]
    # seeds must reach max(0.5, 0.7 * 0.95 = 0.665)
    rule = BoxRule(threshold=0.5, peak_share=0.7, area_share=0, min_area=0)
    assert [b.xyxy for b in attention_to_boxes(att, (10, 20), rule)] == [(4, 3, 8, 6)]
    att[8, 15:17] = 0.7    # a second defect nearly as strong is kept
    assert len(attention_to_boxes(att, (10, 20), rule)) == 2
    assert attention_to_boxes(np.full((10, 20), 0.3, np.float32), (10, 20), rule) == []  # the threshold still holds
    # an older package's rule: its levels as stored, a level it lacks off (not today's default)
    assert BoxRule.from_dict({"threshold": 0.7, "unknown": 1}) == BoxRule(threshold=0.7, area_share=0, refine=0,
                                                                          novelty=0, min_area=0)
    with pytest.raises(ValueError, match="peak_share"):
        BoxRule(peak_share=1.5, min_area=0)


def test_a_saturated_speck_beside_a_crack_is_dropped_by_the_area_share():
    att = np.zeros((40, 100), np.float32)
    att[18:22, 10:90] = 1.0   # a long crack, saturated
    att[5:7, 50:52] = 1.0     # a speck elsewhere, just as saturated: peaks cannot tell them apart
    both = attention_to_boxes(att, (40, 100), threshold=0.5, peak_share=0.7, area_share=0, min_area=0)
    assert len(both) == 2
    # the default rule keeps it (area_share is off by default)
    assert len(attention_to_boxes(att, (40, 100), min_area=0)) == 2
    crack = attention_to_boxes(att, (40, 100), threshold=0.5, peak_share=0.7, area_share=0.1, min_area=0)
    assert [b.xyxy for b in crack] == [(10, 18, 90, 22)]
    two = att.copy()
    two[30:34, 20:60] = 1.0   # a second real defect of half the size stays
    assert len(attention_to_boxes(two, (40, 100), threshold=0.5, area_share=0.1, min_area=0)) == 2
    with pytest.raises(ValueError, match="area_share must be in"):
        attention_to_boxes(att, (40, 100), area_share=1.5, min_area=0)


def _hole_under_a_blob(channels: int = 0):
    """A 120x160 frame of noisy surface with a 6x6 dark hole at rows 50..55, cols 70..75, and a map whose blob
    (stride-8 cells, as the model's) covers about 40x40 pixels around it."""
    rng = np.random.default_rng(0)
    frame = (128 + rng.normal(0, 4, (120, 160) + ((channels,) if channels else ()))).astype(np.uint8)
    frame[50:56, 70:76] = 60
    att = np.zeros((15, 20), np.float32)
    att[5:8, 8:10] = 1.0
    return frame, att


def test_refine_boxes_the_pixels_that_stand_out_within_the_maps_region():
    from inspection.core.boxes import BoxRule

    frame, att = _hole_under_a_blob()
    rule = BoxRule(threshold=0.5, refine=0.3, min_area=0)
    bare = BoxRule(threshold=0.5, refine=0, min_area=0)
    whole = attention_to_boxes(att, frame.shape, bare, frame=frame)
    assert [b.xyxy for b in whole] == [(64, 40, 80, 64)]  # the map's cells: far larger than the hole
    refined = attention_to_boxes(att, frame.shape, rule, frame=frame)
    assert len(refined) == 1 and np.allclose(refined[0].xyxy, (70, 50, 76, 56), atol=1)
    assert refined[0].score == whole[0].score and refined[0].area == whole[0].area  # scored as the region
    assert attention_to_boxes(att, frame.shape, rule) == whole  # no frame: the region whole
    # color, any channel order and dtype: the hole in one channel only is found as well
    color, _ = _hole_under_a_blob(3)
    color[50:56, 70:76] = (128, 128, 250)
    assert np.allclose(attention_to_boxes(att, color.shape[:2], rule, frame=color.astype(np.float32) / 255)[0].xyxy,
                       (70, 50, 76, 56), atol=1)
    # a region where nothing stands out keeps its box; a hole outside the region does not pull the box out
    flat = frame.copy()
    flat[50:56, 70:76] = flat[10:16, 10:16]
    assert attention_to_boxes(att, frame.shape, rule, frame=flat) == whole
    away = flat.copy()
    away[100:110, 140:150] = 0
    assert attention_to_boxes(att, frame.shape, rule, frame=away) == whole
    # the model's ROI: the frame is cropped as the map is, boxes land in frame pixels
    big = np.full((200, 300), 128, np.uint8)
    big[30:150, 40:200] = frame
    roi = attention_to_boxes(att, big.shape, rule, roi=(40, 30, 160, 120), frame=big)
    assert np.allclose(roi[0].xyxy, (110, 80, 116, 86), atol=1)
    with pytest.raises(ValueError, match="refine must be in"):
        BoxRule(refine=1.0, min_area=0)


def test_a_region_whose_features_good_parts_also_have_is_dropped_by_the_novelty_level():
    from inspection.core.boxes import BoxRule

    att = np.zeros((10, 20), np.float32)
    att[0:2, :] = 0.95      # a hot border along the part's top edge
    att[5:7, 8:10] = 0.9    # a defect
    far = np.full((10, 20), 0.5, np.float32)   # feature distance to the good parts' bank, per cell
    far[5:7, 8:10] = 3.0    # the defect's features are new; the border's are what good parts have
    rule = BoxRule(threshold=0.8, area_share=0, refine=0, novelty=0.9, novelty_distance=2.0, min_area=0)
    assert [b.xyxy for b in attention_to_boxes(att, (10, 20), rule, novelty=far)] == [(8, 5, 10, 7)]
    # off: no distance map, level 0 (an older package) or no distance set from validation
    off = BoxRule(threshold=0.8, area_share=0, refine=0, novelty=0, novelty_distance=2.0, min_area=0)
    for r, f in ((rule, None), (off, far),
                 (BoxRule(threshold=0.8, area_share=0, refine=0, novelty=0.9, min_area=0), far)):
        assert len(attention_to_boxes(att, (10, 20), r, novelty=f)) == 2
    far[0, 19] = 2.5        # one new cell on the border: the region is kept whole
    assert len(attention_to_boxes(att, (10, 20), rule, novelty=far)) == 2
    # the border gone first, the area share no longer drops the defect beside it
    far[0, 19] = 0.5
    shared = BoxRule(threshold=0.8, area_share=0.2, refine=0, novelty=0.9, novelty_distance=2.0, min_area=0)
    assert [b.xyxy for b in attention_to_boxes(att, (10, 20), shared, novelty=far)] == [(8, 5, 10, 7)]
    assert "features" in shared.describe() and "novelty" in BoxRule.text()
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="novelty_distance"):
            BoxRule(novelty_distance=bad, min_area=0)


def test_the_grow_level_spreads_a_region_over_the_new_pixels_of_a_large_defect_and_not_over_a_halo():
    from inspection.core.boxes import BoxRule, grow_regions

    att = np.zeros((20, 40), np.float32)
    att[7:9, 18:20] = 0.9            # the map lights two cells of a large defect
    att[15:17, 2:4] = 0.9            # and a small defect whole
    far = np.full((20, 40), 0.5, np.float32)       # feature distance to the good parts, per pixel
    far[4:12, 10:30] = 2.6
    far[7:9, 18:20] = 3.0            # the large defect is new all over, about as new as its lit cells
    far[14:18, 1:5] = 2.2            # a halo around the small defect: new, but far less than the defect itself
    far[15:17, 2:4] = 4.0
    far[0:3, 34:38] = 3.5            # new, but no region of the map: no box
    rule = BoxRule(threshold=0.8, novelty=0.9, novelty_distance=2.0, grow=0.7, min_area=0)
    assert sorted(b.xyxy for b in attention_to_boxes(att, (20, 40), rule, novelty=far)) == [
        (2, 15, 4, 17), (10, 4, 30, 12)]
    # at half of the highest distance the halo (2.2 >= 0.5 * 4.0) joins the small defect
    half = BoxRule(threshold=0.8, novelty=0.9, novelty_distance=2.0, grow=0.5, min_area=0)
    assert sorted(b.xyxy for b in attention_to_boxes(att, (20, 40), half, novelty=far)) == [
        (1, 14, 5, 18), (10, 4, 30, 12)]
    # off: level 0, no distance map, the novelty level off or no distance set from validation: the lit cells only
    for r, f in ((BoxRule(threshold=0.8, novelty=0.9, novelty_distance=2.0, min_area=0), far), (rule, None),
                 (BoxRule(threshold=0.8, novelty=0, novelty_distance=2.0, grow=0.7, min_area=0), far),
                 (BoxRule(threshold=0.8, novelty=0.9, grow=0.7, min_area=0), far)):
        assert sorted(b.xyxy for b in attention_to_boxes(att, (20, 40), r, novelty=f)) == [
            (2, 15, 4, 17), (18, 7, 20, 9)]
    # a new pixel beyond a gap of old ones is not reached
    hot = att >= 0.8
    far[4:12, 24] = 0.5
    grown = grow_regions(hot, far, 2.0, 0.7)
    assert grown[4:12, 10:24].all() and not grown[:, 24:].any()
    assert "grown" in rule.describe() and "grow" in BoxRule.text()
    assert BoxRule.from_dict({"threshold": 0.5}).grow == 0  # a package from before the level: off
    with pytest.raises(ValueError, match="grow must be in"):
        BoxRule(grow=1.0, min_area=0)
