"""When to try again: table-driven."""

from __future__ import annotations

import pytest

from tasks import retry


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 1), (1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (50, 60)],
)
def test_a_refused_run_waits_a_jittered_delay_under_a_doubling_ceiling(
    attempt: int, ceiling: float
) -> None:
    assert retry.refusal_delay(attempt, rand=lambda: 1.0) == ceiling
    assert retry.refusal_delay(attempt, rand=lambda: 0.0) == 0
    assert retry.refusal_delay(attempt, rand=lambda: 0.5) == ceiling / 2


@pytest.mark.parametrize(
    ("probes", "delay"),
    [(0, 1), (1, 2), (2, 4), (3, 8), (4, 15), (100, 15)],
)
def test_the_sink_is_checked_again_after_a_growing_delay_capped_at_fifteen_seconds(
    probes: int, delay: float
) -> None:
    assert retry.outage_delay(probes) == delay


@pytest.mark.parametrize(("probes", "delay"), [(0, 1), (1, 2), (2, 2), (100, 2)])
def test_outbox_outage_check_max_caps_the_delay_between_checks(probes: int, delay: float) -> None:
    assert retry.outage_delay(probes, longest=2) == delay
