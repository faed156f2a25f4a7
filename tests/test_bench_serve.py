"""``bench serve --capacity``: the ramp, the stop rule and the report, over rows (no server runs)."""

from __future__ import annotations

import pytest

from streamvlm.bench.serve import (
    ServeBenchConfig,
    ServeBenchResult,
    ServeBenchRow,
    capacity_sessions,
    ramp_counts,
    within_limits,
)
from streamvlm.cli import main
from streamvlm.cli_options import DEFAULT_MODEL


def row(sessions: int, p99: float | None = 0.2, dropped: int = 0, **fields) -> ServeBenchRow:
    """A session count's figures: every frame encoded, answers at ``p99``, unless told."""
    sent = 20 * sessions
    values = dict(
        sessions=sessions,
        fps_target=1.0,
        duration_s=20.0,
        frames_sent=sent,
        frames_accepted=sent,
        frames_encoded_in_window=sent - dropped,
        frames_encoded=sent - dropped,
        frames_dropped=dropped,
        frames_dropped_rate=0,
        frames_dropped_queue=dropped,
        frames_rejected=0,
        drain_s=0.1,
        answers=9 * sessions if p99 is not None else 0,
        answer_errors=0,
        latency_p50_s=None if p99 is None else p99 / 2,
        latency_p99_s=p99,
        ttft_p50_s=None if p99 is None else p99 / 3,
        server_latency_p50_s=None if p99 is None else p99 / 2,
        frames_wait_p50_s=None if p99 is None else p99 / 4,
        frames_wait_p99_s=None if p99 is None else p99 / 2,
        answer_p50_s=None if p99 is None else p99 / 4,
        answer_p99_s=None if p99 is None else p99 / 2,
        memory_bytes_per_session={"device": 1.0},
        memory_bytes_max={"device": 1},
    )
    return ServeBenchRow(**{**values, **fields})


def test_a_count_is_within_the_limits_when_nothing_is_lost_and_p99_is_at_most_the_limit():
    assert within_limits(row(4, p99=1.0), 1.0)
    assert not within_limits(row(4, p99=1.001), 1.0)
    assert not within_limits(row(4, dropped=1), 1.0)
    assert not within_limits(row(4, frames_rejected=1), 1.0)
    assert not within_limits(row(4, answer_errors=1), 1.0)  # a question that failed is not fast
    assert not within_limits(row(4, p99=None), 1.0)  # no answer: nothing shows the latency


def test_capacity_is_the_last_count_before_the_first_out_of_the_limits():
    rows = [row(1), row(2), row(4, p99=0.9), row(6, p99=1.4), row(8, p99=0.5)]
    assert capacity_sessions(rows, 1.0) == 4  # 8 passing after 6 failed is noise, not capacity
    assert capacity_sessions(rows, 2.0) == 8
    assert capacity_sessions([row(1, dropped=2)], 1.0) == 0
    assert capacity_sessions([], 1.0) == 0


def test_the_ramp_goes_1_2_4_6_8_then_by_at_most_a_quarter():
    counts = ramp_counts(64)
    assert counts[:5] == (1, 2, 4, 6, 8)
    assert counts[-1] == 64 and ramp_counts(5) == (1, 2, 4) and ramp_counts(1) == (1,)
    steps = [(a, b) for a, b in zip(counts, counts[1:], strict=False) if a >= 8]
    assert all(b - a <= a / 4 for a, b in steps), steps


def test_capacity_mode_runs_the_deployed_model_at_1_fps_and_reports_its_capacity():
    config = ServeBenchConfig.for_capacity(duration_s=5.0)
    assert config.capacity and config.model == DEFAULT_MODEL and config.fps == 1.0
    assert config.window is None  # the checkpoint's recommended window, as a deployment runs it
    assert config.counts == ramp_counts(64) and config.duration_s == 5.0
    assert ServeBenchConfig.for_capacity(fps=2.0, window=4).fps == 2.0
    plain = ServeBenchConfig()
    assert not plain.capacity and plain.counts == (1, 2, 4) and plain.window == 8
    doc = ServeBenchResult(config, rows=[row(1), row(2, p99=3.0)]).to_dict()
    assert doc["capacity_sessions"] == 1 and [r["sessions"] for r in doc["rows"]] == [1, 2]
    assert doc["config"]["lock"] == "priority" and doc["config"]["p99_limit_s"] == 1.0
    assert "capacity_sessions" not in ServeBenchResult(plain, rows=[row(1)]).to_dict()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--capacity", "--sessions", "2"], "--sessions"),
        (["--capacity", "--p99-limit", "0"], "--p99-limit"),
        (["--lock", "lifo"], "--lock"),
        (["--failover"], "--failover needs --ray"),
        (["--replicas", "3"], "--replicas needs --ray"),
        (["--ray", "--capacity"], "with --ray use --sessions-per-replica"),
        (["--ray", "--registry", "http://h:1"], "use redis://"),
    ],
)
def test_bench_serve_refuses_capacity_options_that_cannot_work(argv, message, capsys):
    try:
        code = main(["bench", "serve", *argv])
    except SystemExit as e:  # argparse refuses a bad choice itself
        code = e.code
    assert code == 2 and message in capsys.readouterr().err


def test_failover_figures_count_what_the_resumed_memory_lacks():
    from streamvlm.bench.cluster import CameraLog, ClusterBenchConfig, _failover

    stayed = CameraLog("cam1")
    moved = CameraLog("cam0", disconnected_at=1.0, failover_s=1.4, answer_after="7")
    # 24 frames sent, 22 acked as encoded, 20 in the published memory (10 blocks of 2)
    moved.frames_sent_before, moved.encoded_before = 24, 22
    moved.restored_frames, moved.restored_blocks = 20, 10
    figures = _failover([moved, stayed], ClusterBenchConfig(flush_s=2.0))
    assert figures["sessions_moved"] == 1 and figures["failover_s"] == 1.4
    assert figures["frames_lost"] == 4 and figures["blocks_lost"] == 1 and figures["frames_per_block"] == 2
    assert figures["flush_interval_blocks"] == 1 and figures["answers_correct_after_failover"] is True
