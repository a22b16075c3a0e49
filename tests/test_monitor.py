"""Surge detectors, the sentiment index and the stream simulator of llmbook.monitor."""

import math

import numpy as np
import pytest

from llmbook import monitor


def _step_series(n=100, change=60, before=5.0, after=15.0, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    values = np.where(np.arange(n) < change, before, after) + rng.normal(0, noise, n)
    return values


def test_zscore_detects_a_step_at_once_and_is_silent_before():
    series = _step_series()
    alarms = monitor.zscore_alarms(series, window=20, threshold=4.0)
    onsets = monitor.alarm_onsets(alarms)
    assert onsets.size and onsets[0] == 60  # a jump of 10 sd is seen in its first bin
    assert not alarms[:60].any()


def test_cusum_detects_a_small_shift_within_the_expected_delay():
    # a shift of 1 sd: each bin adds about 1 - k = 0.5 to S, so S passes h = 4 after about 8-9 bins
    series = _step_series(before=0.0, after=1.0, noise=1.0, seed=3)
    statistic, alarms = monitor.cusum(series, window=30, k=0.5, h=4.0)
    onsets = monitor.alarm_onsets(alarms)
    first_after = onsets[onsets >= 60]
    assert first_after.size and first_after[0] - 60 <= 20
    assert statistic.min() >= 0 and statistic[:30].max() == 0


def test_cusum_freezes_its_baseline_during_a_slow_surge():
    # A slow ramp (0.05 per bin): a baseline that kept rolling would lag it by only ~0.5, below the
    # allowance k = 0.5, and never alarm; a baseline frozen when S leaves 0 sees the ramp grow.
    series = np.concatenate([np.zeros(40), 0.05 * np.arange(1, 101)])
    assert monitor.cusum_alarms(series, window=20, k=0.5, h=4.0)[40:].any()


@pytest.mark.parametrize("detector", [
    lambda s: monitor.zscore_alarms(s, window=10, threshold=3.0),
    lambda s: monitor.cusum_alarms(s, window=10, k=0.5, h=4.0),
])
def test_no_alarm_on_a_constant_series(detector):
    assert not detector(np.full(50, 7.0)).any()


@pytest.mark.parametrize("bad, message", [
    ([], "empty"),
    ([1.0, float("nan"), 2.0, 3.0], r"series\[1\] is nan"),
    ([1.0, 2.0, 3.0], "not shorter than the series"),
    (np.ones((3, 4, 2)), "must be 1-D"),
    ("1234", "sequence of numbers"),
])
def test_bad_series_are_clear_errors(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        monitor.zscore_alarms(bad, window=3, threshold=2.0)
    with pytest.raises((ValueError, TypeError), match=message):
        monitor.cusum(bad, window=3)


def test_bad_parameters_are_clear_errors():
    series = np.zeros(20)
    with pytest.raises(ValueError, match="h must be > 0"):
        monitor.cusum(series, window=5, h=0)
    with pytest.raises(TypeError, match="threshold must be a number"):
        monitor.zscore_alarms(series, window=5, threshold="3")
    with pytest.raises(ValueError, match="min_std must be > 0"):
        monitor.rolling_zscore(series, 5, min_std=0.0)


def test_alarm_onsets_counts_episodes():
    alarms = np.array([False, True, True, False, True, False, False, True])
    assert monitor.alarm_onsets(alarms).tolist() == [1, 4, 7]


def test_bin_counts_and_sentiment_index():
    times = [0.1, 0.2, 0.3, 1.5, 1.6]
    topics = [0, 0, 1, 0, 0]
    labels = [0, 1, 1, 0, 0]  # 0 negative, 1 positive
    counts = monitor.bin_counts(times, topics, labels, n_topics=2, n_labels=2, bin_width=1.0, duration=2.0)
    assert counts.shape == (2, 2, 2) and counts.sum() == 5
    assert counts[0, 0].tolist() == [1, 1] and counts[1, 0].tolist() == [2, 0]
    index = monitor.sentiment_index(counts, positive_label=1, negative_label=0, window=1)
    assert index[0, 0] == 0.0 and index[1, 0] == -1.0 and index[0, 1] == 1.0 and math.isnan(index[1, 1])
    rolling = monitor.sentiment_index(counts, positive_label=1, negative_label=0, window=2)
    assert rolling[1, 0] == pytest.approx((1 - 3) / 4) and rolling[1, 1] == 1.0
    with pytest.raises(ValueError, match=r"times must be finite and in \[0, duration"):
        monitor.bin_counts([2.5], [0], [0], n_topics=1, n_labels=1, bin_width=1.0, duration=2.0)


def _pool():
    rng = np.random.default_rng(0)
    return rng.integers(0, 4, 2_000), rng.choice(3, 2_000, p=[0.15, 0.25, 0.6])


def test_stream_simulator_is_seeded_and_injects_a_known_surge():
    topics, labels = _pool()
    a = monitor.simulate_stream(topics, labels, negative_label=0, seed=7, days=30, per_day=300, surge_factor=3.0)
    b = monitor.simulate_stream(topics, labels, negative_label=0, seed=7, days=30, per_day=300, surge_factor=3.0)
    c = monitor.simulate_stream(topics, labels, negative_label=0, seed=8, days=30, per_day=300, surge_factor=3.0)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.times, b.times) and a.surge_start == b.surge_start
    assert not (len(a) == len(c) and np.array_equal(a.rows, c.rows))
    assert np.all(np.diff(a.times) >= 0) and a.times.min() >= 0 and a.times.max() < 30
    assert 10 <= a.surge_start and a.surge_end == pytest.approx(a.surge_start + 2.0) and a.surge_end <= 30
    injected = a.rows[a.injected]
    assert injected.size > 0
    assert (topics[injected] == a.surge_topic).all() and (labels[injected] == 0).all()
    assert ((a.times[a.injected] >= a.surge_start) & (a.times[a.injected] < a.surge_end)).all()
    # during the surge the topic has about 1 + surge_factor times its usual negative tweets
    in_window = (a.times >= a.surge_start) & (a.times < a.surge_end)
    neg_topic = (topics[a.rows] == a.surge_topic) & (labels[a.rows] == 0)
    rate_in = (neg_topic & in_window).sum() / 2.0
    rate_out = (neg_topic & ~in_window).sum() / 28.0
    assert 2.5 < rate_in / rate_out < 6.0


def test_stream_simulator_checks_its_pool():
    topics, labels = _pool()
    with pytest.raises(ValueError, match="no text labelled negative_label=5"):
        monitor.simulate_stream(topics, labels, negative_label=5, seed=0)
    with pytest.raises(ValueError, match="surge_topics must be"):
        monitor.simulate_stream(topics, labels, negative_label=0, seed=0, surge_topics=[9])
    with pytest.raises(ValueError, match="beyond the stream"):
        monitor.simulate_stream(topics, labels, negative_label=0, seed=0, days=5, earliest_start=4)


def test_score_alarms_and_summary():
    score = monitor.score_alarms(
        [(2, 3), (1, 50), (1, 41), (1, 44)], surge_topic=1, surge_start=10.1, surge_end=12.0, bin_width=0.25
    )
    # bin 41 covers [10.25, 10.5): detected with delay 10.5 - 10.1; bin 44 inside the window is not false
    assert score["detected"] == 1 and score["delay"] == pytest.approx(0.4) and score["false_alarms"] == 2
    missed = monitor.score_alarms([], surge_topic=1, surge_start=10.0, surge_end=12.0, bin_width=0.25)
    assert missed["detected"] == 0 and math.isnan(missed["delay"])
    summary = monitor.summarize_detections([score, missed], days_per_stream=30)
    assert summary["detection_rate"] == 0.5 and summary["median_delay"] == pytest.approx(0.4)
    assert summary["false_alarms_per_month"] == 1.0
    with pytest.raises(ValueError, match="scores is empty"):
        monitor.summarize_detections([], days_per_stream=30)


def test_detect_by_topic_runs_every_column():
    series = np.zeros((60, 3))
    series[40:, 2] = 10.0
    found = monitor.detect_by_topic(series, monitor.zscore_alarms, window=10, threshold=3.0)
    assert found == [(2, 40)]


def test_a_2d_input_runs_one_detector_per_column():
    rng = np.random.default_rng(5)
    series = rng.poisson(3.0, size=(80, 4)).astype(float)
    series[50:60, 1] += 8
    for detector in (lambda s: monitor.cusum(s, window=20, k=0.5, h=4.0)[0],
                     lambda s: monitor.rolling_zscore(s, 20)):
        together = detector(series)
        apart = np.stack([detector(series[:, j]) for j in range(4)], axis=1)
        np.testing.assert_allclose(together, apart, equal_nan=True)
    assert monitor.cusum_alarms(series, window=20)[50:60, 1].any()
