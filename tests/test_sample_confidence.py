"""What phase 03's samples can tell, stated on the page: the share of records that could differ unseen (the
upper end of a Wilson interval) and how far the measured recall could be off (a Wilson interval over the
neighbours sought)."""

from __future__ import annotations

import pytest

from runbook import load


def test_the_bounds_of_a_share_are_wilsons_and_never_break():
    # known values of the Wilson score interval at 95% (z = 1.96)
    assert load.wilson(0, 100) == (0.0, pytest.approx(0.0370, abs=1e-4))
    assert load.wilson(5, 100) == (pytest.approx(0.0215, abs=1e-4), pytest.approx(0.1118, abs=1e-4))
    assert load.wilson(0, 1000)[1] == pytest.approx(0.00383, abs=1e-5)
    assert load.wilson(100, 100) == (pytest.approx(0.963, abs=1e-3), pytest.approx(1.0))
    assert load.wilson(0, 0) == (0.0, 1.0)
    # more than n (a caller's slip) is read as all of them, never a math error
    assert load.wilson(150, 100) == load.wilson(100, 100)
    # more samples, a tighter bound; more failures, a looser one
    assert load.wilson(0, 50)[1] > load.wilson(0, 100)[1] > load.wilson(0, 200)[1]
    assert load.wilson(1, 100)[1] > load.wilson(0, 100)[1]


def test_the_recall_interval_is_over_the_neighbours_sought_and_never_of_zero_width():
    # 500 of 500 neighbours found: the interval still admits a few missed
    assert load.recall_interval([1.0] * 50) == "0.9924-1.0000 over 50 queries"
    assert load.recall_interval([0.9, 1.0] * 25) == "0.9272-0.9659 over 50 queries"
    assert load.recall_interval([1.0], k=10) == "0.7225-1.0000 over 1 queries"
    assert load.recall_interval([0.5, 0.5], k=2) == "0.1500-0.8500 over 2 queries"
    assert load.recall_interval([]) == "no queries"
