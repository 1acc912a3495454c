import numpy as np
import pytest

from inspection.core.novelty import (
    BANK_CELLS,
    distance_map,
    hot_cells,
    nearest,
    select_bank,
)


def test_nearest_distance_is_the_brute_force_minimum():
    rng = np.random.default_rng(0)
    cells, bank = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    brute = np.sqrt(((cells[:, None] - bank[None]) ** 2).sum(-1)).min(1)
    assert np.allclose(nearest(cells, bank, chunk=64), brute, atol=1e-4)
    assert np.allclose(nearest(bank[:5], bank), 0, atol=1e-3)  # a bank cell is at distance 0 of itself
    with pytest.raises(ValueError, match="same C"):
        nearest(cells, bank[:, :4])


def test_distance_map_computes_only_the_cells_asked_for():
    rng = np.random.default_rng(1)
    features, bank = rng.normal(size=(4, 6, 5)).astype(np.float32), rng.normal(size=(20, 4)).astype(np.float32)
    full = distance_map(features, bank)
    assert full.shape == (6, 5) and (full > 0).all()
    assert np.allclose(full.reshape(-1), nearest(features.reshape(4, -1).T, bank))
    where = np.zeros((6, 5), bool)
    where[2:4, 1:3] = True
    part = distance_map(features, bank, where)
    assert np.array_equal(part[where], full[where]) and (part[~where] == 0).all()
    assert (distance_map(features, bank, np.zeros((6, 5), bool)) == 0).all()


def test_hot_cells_are_the_cells_at_the_level_and_their_neighbours():
    att = np.zeros((6, 6), np.float32)
    att[2, 3] = 0.9
    hot = hot_cells(att, 0.8)
    assert hot.sum() == 9 and hot[1:4, 2:5].all()
    assert not hot_cells(att, 0.95).any()


def test_the_bank_covers_rare_good_cells_that_a_random_sample_would_miss():
    rng = np.random.default_rng(0)
    common = rng.normal(size=(20000, 8)).astype(np.float32)        # the part's surface, everywhere
    rare = rng.normal(size=(10, 8)).astype(np.float32) * 0.1 + 12  # its border: a few cells, far from the rest
    cells = np.concatenate([common, rare])
    bank = select_bank(cells, 200)
    assert bank.shape == (200, 8) and bank.dtype == np.float32 and np.array_equal(bank, select_bank(cells, 200))
    assert nearest(rare, bank).max() < 1.0   # the border is in the bank: it does not look new
    random = cells[np.random.default_rng(1).choice(len(cells), 200, replace=False)]  # no border cell drawn
    assert nearest(rare, random).max() > 5.0 and nearest(cells, bank).max() < nearest(cells, random).max()
    assert np.array_equal(select_bank(cells[:10]), cells[:10])  # fewer cells than the bank holds: all of them
    assert len(select_bank(np.zeros((5000, 2), np.float32) + np.arange(5000)[:, None])) == BANK_CELLS
    with pytest.raises(ValueError, match="non-empty"):
        select_bank(np.zeros((0, 3)))


def test_hot_cells_of_a_finer_map_ask_for_the_feature_cells_under_them():
    from inspection.core.novelty import hot_cells

    att = np.zeros((16, 24), np.float32)
    att[5, 7] = 0.9  # one hot cell of a map twice as fine as the features
    cells = hot_cells(att, 0.5, (8, 12))
    assert cells.shape == (8, 12) and cells[2, 3] and cells[1:4, 2:5].all() and cells.sum() == 9
