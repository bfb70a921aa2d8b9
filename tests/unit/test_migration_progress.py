"""Job stats -> progress figures (pure)."""

from __future__ import annotations

from vmmgr.migration import JobSample, sample_from_stats

# shaped like dom.jobStats() during a lab migration (libvirt 9, TCG guest, 128 MiB)
RUNNING = {
    "type": 2,
    "operation": 5,
    "time_elapsed": 3029,
    "data_total": 134610944,
    "data_processed": 6955008,
    "data_remaining": 127655936,
    "memory_total": 134610944,
    "memory_processed": 6955008,
    "memory_remaining": 127655936,
    "memory_bps": 2134260,
    "memory_dirty_rate": 12,
    "memory_page_size": 4096,
    "memory_iteration": 1,
    "disk_total": 0,
}
COMPLETED = {
    "type": 3,
    "time_elapsed": 775,
    "downtime": 271,
    "data_processed": 91929726,
    "data_total": 134610944,
    "data_remaining": 0,
}


def test_sample_from_running_stats() -> None:
    s = sample_from_stats(RUNNING)
    assert s.elapsed_ms == 3029 and s.iteration == 1
    assert s.bandwidth_bps == 2134260.0
    assert s.dirty_rate_bps == 12 * 4096
    assert s.percent == 5.2
    assert s.downtime_ms is None


def test_completed_stats_carry_the_downtime() -> None:
    s = sample_from_stats(COMPLETED)
    assert s.downtime_ms == 271 and s.percent == 100.0 and s.data_processed == 91929726


def test_percent_is_clamped_and_safe_without_totals() -> None:
    assert JobSample().percent == 0.0
    assert JobSample(data_total=100, data_remaining=250).percent == 0.0
    assert JobSample(data_total=100, data_remaining=0).percent == 100.0


def test_missing_or_odd_fields_default_to_zero() -> None:
    s = sample_from_stats({"type": 2, "memory_dirty_rate": "n/a", "downtime": None})
    assert s == JobSample()
    # page size defaults to 4 KiB when libvirt does not report it
    assert sample_from_stats({"memory_dirty_rate": 2}).dirty_rate_bps == 8192
