"""What phase 03's samples can tell, stated on the page: the share of records that could differ unseen (the
upper end of a Wilson interval) and how far the measured recall could be off (a 95% interval over queries)."""

from __future__ import annotations

import pytest

from runbook import load


def test_the_upper_bound_of_an_unseen_share_is_wilsons():
    # known values of the Wilson score interval at 95% (z = 1.96)
    assert load.wilson_upper(0, 100) == pytest.approx(0.0370, abs=1e-4)
    assert load.wilson_upper(5, 100) == pytest.approx(0.1118, abs=1e-4)
    assert load.wilson_upper(0, 1000) == pytest.approx(0.00383, abs=1e-5)
    assert load.wilson_upper(100, 100) == pytest.approx(1.0) and load.wilson_upper(0, 0) == 1.0
    # more samples, a tighter bound; more failures, a looser one
    assert load.wilson_upper(0, 50) > load.wilson_upper(0, 100) > load.wilson_upper(0, 200)
    assert load.wilson_upper(1, 100) > load.wilson_upper(0, 100)


def test_the_recall_interval_spans_the_per_query_spread():
    assert load.recall_interval([1.0] * 50) == "1.0000-1.0000 over 50 queries"
    # mean 0.95, sample sd 0.0505 over 50 queries: 0.95 -/+ 1.96 * 0.00714
    assert load.recall_interval([0.9, 1.0] * 25) == "0.9360-0.9640 over 50 queries"
    assert load.recall_interval([0.5]) == "0.5000-0.5000 over 1 queries"
    assert load.recall_interval([0.0, 1.0]) == "0.0000-1.0000 over 2 queries"
    assert load.recall_interval([]) == "no queries"
