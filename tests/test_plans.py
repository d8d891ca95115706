import numpy as np
import pytest

from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.plans import (KINDS, anchor_column, anchored_plan, anchored_sorted_plan, make_plan,
                                              multidiffusion_plan)

SIZES = [(n, T) for T in (2, 3, 4, 5, 8) for n in list(range(1, 30)) + [97, 100, 101, 400]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,T", SIZES)
def test_every_frame_exactly_once_in_order(kind, n, T):
    plan = make_plan(kind, n, T)
    assert plan.slots.shape[1] == T
    assert np.all(np.diff(plan.slots, axis=1) >= 0), "rows sorted"
    # each frame rendered: owners cover the timeline exactly once (multidiffusion: weights sum to one)
    if kind != "multidiffusion":
        assert sorted(plan.slots[plan.owner].tolist()) == list(range(n))
    per_frame = np.zeros(n)
    np.add.at(per_frame, plan.slots, plan.weights)
    np.testing.assert_allclose(per_frame, 1.0)
    # merging the slot contents onto the timeline with the plan's weights (what the sampler does with its
    # per-slot predictions, Alg. 1 step 5) gives back the timeline, in order
    merged = np.zeros(n)
    np.add.at(merged, plan.slots, plan.weights * plan.slots)
    np.testing.assert_allclose(merged, np.arange(n), rtol=0, atol=1e-9)
    if kind != "multidiffusion":  # owner-based: a weight is 1 on the owner slot, 0 elsewhere
        np.testing.assert_array_equal(plan.weights, plan.owner.astype(plan.weights.dtype))


@pytest.mark.parametrize("n,T", SIZES)
def test_anchor_in_one_column(n, T):
    """Eq. (1): the anchor sits in the same column of every sequence; every sequence is a training-like sequence
    (T distinct frames in temporal order: each temporal position once); sequence 0 alone owns the anchor."""
    plan = anchored_plan(n, T)
    a = n // 2
    assert plan.anchor == a
    if T == 2 and n > T:  # no common column exists with one free slot: the sorted layout (documented)
        assert np.array_equal(plan.slots, anchored_sorted_plan(n, T).slots)
        return
    assert len(np.unique(plan.anchor_positions)) == 1, "one common column"
    k = int(plan.anchor_positions[0])
    assert np.all(plan.slots[:, k] == a)
    if n > T:
        assert np.all(np.diff(plan.slots, axis=1) > 0), "distinct frames in temporal order"
        assert np.all(plan.slots[:, :k] < a) and np.all(plan.slots[:, k + 1:] > a)
        # no more sequences than the column needs, and the column is the best one
        assert plan.num_sequences == anchor_column(a, n - 1 - a, T)[1]
        best = min(max(-(-a // j) if j else (0 if a == 0 else 10**9),
                       -(-(n - 1 - a) // (T - 1 - j)) if T - 1 - j else (0 if n - 1 - a == 0 else 10**9))
                   for j in range(T))
        assert plan.num_sequences == max(best, 1)
    assert plan.owner[0, k] and not plan.owner[1:, k].any()
    assert sorted(plan.slots[plan.owner].tolist()) == list(range(n)), "every frame rendered exactly once"


def test_anchor_column_examples():
    # the examples: today's layout put the anchor at [3, 3, 0, 0] and [7, 7, 7, 4, 0, 0, 0]
    plan = anchored_plan(13, 4)
    assert plan.anchor_positions.tolist() == [1] * plan.num_sequences
    np.testing.assert_array_equal(plan.slots[0], [0, 6, 7, 8])
    plan = anchored_plan(50, 8)
    assert plan.anchor_positions.tolist() == [4] * 8 and plan.num_sequences == 8
    assert anchored_sorted_plan(50, 8).anchor_positions.tolist() == [7, 7, 7, 4, 0, 0, 0]
    # T odd: both sides get (T-1)/2 slots and no sequence is wasted
    plan = anchored_plan(101, 5)
    assert plan.anchor_positions[0] == 2 and plan.num_sequences == 25 and plan.owner.sum() == 101


@pytest.mark.parametrize("n,T", SIZES)
def test_anchored_sorted_structure(n, T):
    plan = anchored_sorted_plan(n, T)
    a = n // 2
    assert plan.anchor == a
    rows = np.arange(plan.num_sequences)
    assert np.all(plan.slots[rows, plan.anchor_positions] == a), "anchor in every row"
    assert np.all((plan.slots == a).sum(1) >= 1)
    # the anchor is owned (and donated) by sequence 0 only
    assert plan.owner[0, plan.anchor_positions[0]] and not plan.owner[1:][plan.slots[1:] == a].any()
    if n > T:
        assert plan.num_sequences == -(-(n - 1) // (T - 1))
        # non-anchor owners form contiguous groups of T-1 in temporal order
        others = [plan.slots[b][plan.owner[b] & (plan.slots[b] != a)] for b in rows]
        flat = np.concatenate(others)
        np.testing.assert_array_equal(flat, np.delete(np.arange(n), a))
        rank = np.searchsorted(np.delete(np.arange(n), a), np.concatenate(others)).reshape(-1)
        assert all(np.all(np.diff(np.searchsorted(flat, g)) == 1) for g in others), "contiguous groups"
        assert all(len(g) == T - 1 for g in others[:-1]) and np.array_equal(rank, np.arange(n - 1))
        # duplicates (non-owner, non-anchor) only in the last row, and they are the frames just before its group
        dup = plan.slots[:-1][~plan.owner[:-1] & (plan.slots[:-1] != a)]
        assert dup.size == 0


def test_anchored_sorted_example_and_non_uniform_spacing():
    plan = anchored_sorted_plan(13, 4)
    np.testing.assert_array_equal(plan.slots, [[0, 1, 2, 6], [3, 4, 5, 6], [6, 7, 8, 9], [6, 10, 11, 12]])
    np.testing.assert_array_equal(plan.anchor_positions, [3, 3, 0, 0])
    plan = anchored_sorted_plan(100, 8)
    gaps = np.diff(plan.slots, axis=1)
    assert len(np.unique(plan.anchor_positions)) > 1, "anchor at different positions"
    non_uniform = [len(np.unique(g)) > 1 for g in gaps]
    assert sum(non_uniform) >= plan.num_sequences - 2, "only rows next to the anchor can be uniform"


def test_short_last_group_is_filled_with_frames_just_before():
    plan = anchored_sorted_plan(9, 4)  # others 0 1 2 3 5 6 7 8 -> [0 1 2] [3 5 6] [7 8 +6]
    np.testing.assert_array_equal(plan.slots[-1], [4, 6, 7, 8])
    np.testing.assert_array_equal(plan.owner[-1], [False, False, True, True])


def test_fewer_frames_than_T_padded_by_repetition():
    for kind in KINDS:
        plan = make_plan(kind, 3, 8)
        assert plan.num_sequences == 1 and set(plan.slots[0].tolist()) == {0, 1, 2}
        assert plan.owner.sum() == (8 if kind == "multidiffusion" else 3)
    assert anchored_plan(1, 4).slots.tolist() == [[0, 0, 0, 0]]


def test_multidiffusion_windows():
    plan = multidiffusion_plan(10, 4)
    np.testing.assert_array_equal(plan.slots[:, 0], [0, 2, 4, 6])
    assert np.all(np.diff(plan.slots, axis=1) == 1), "uniform windows"
    assert plan.anchor is None and np.all(plan.anchor_positions == -1)
    b, t = np.nonzero((plan.slots == 3) & (plan.weights > 0))  # frame 3: half of window 0, half of window 1
    assert list(zip(b.tolist(), t.tolist())) == [(0, 3), (1, 1)] and plan.weights[b, t].tolist() == [0.5, 0.5]
    np.testing.assert_array_equal(multidiffusion_plan(10, 4, stride=4).slots[:, 0], [0, 4, 6])


def test_owners_and_errors():
    plan = make_plan("independent", 10, 4)
    np.testing.assert_array_equal(np.sort(plan.slots[plan.owner]), np.arange(10))
    with pytest.raises(AnchorfaceError, match="unknown merge"):
        make_plan("blend", 10, 4)
    with pytest.raises(AnchorfaceError, match="no frames"):
        make_plan("anchored", 0, 4)
    with pytest.raises(AnchorfaceError, match="T >= 2"):
        make_plan("anchored", 5, 1)
