"""Monitoring a labelled text stream: a per-topic sentiment index, surge detectors and their evaluation.

Taught in the finance-monitoring chapter (``notebooks/10_finance_monitoring.ipynb``).

A classifier labels each finance tweet with a topic and a sentiment as it arrives. Counting the
tweets per time bin gives, for every topic, a series such as "Bearish tweets about Earnings per six
hours". An alert should fire when such a series surges. Everything here is plain NumPy over those
series, so that hundreds of simulated streams cost seconds:

- :func:`bin_counts` counts labelled events per (time bin, topic, label);
  :func:`sentiment_index` turns the counts into a rolling index ``(positive - negative) / total``;
- two detectors, each a plain function from a series to a boolean alarm per bin (a 2-D array of
  shape ``(n_bins, n_series)`` runs one independent detector per column, vectorised):
  :func:`zscore_alarms` (how many standard deviations above the mean of a rolling baseline window)
  and :func:`cusum_alarms` (Page's one-sided cumulative sum of standardised excesses, which
  accumulates small but persistent shifts); :func:`rolling_zscore` and :func:`cusum` give the
  statistics themselves, :func:`alarm_onsets` the bins where an alarm starts;
- :func:`simulate_stream`: a seeded, deterministic stream that replays a pool of labelled texts at
  random times and injects one surge of real negative texts about one topic in a known window;
- :func:`score_alarms` and :func:`summarize_detections`: detection rate, detection delay and false
  alarms per simulated month.

Bad input (an empty series, NaN, a baseline window as long as the series) raises one clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from llmbook.checks import require_int

__all__ = [
    "SimulatedStream",
    "alarm_onsets",
    "bin_counts",
    "cusum",
    "cusum_alarms",
    "detect_by_topic",
    "rolling_zscore",
    "score_alarms",
    "sentiment_index",
    "simulate_stream",
    "summarize_detections",
    "zscore_alarms",
]

DAYS_PER_MONTH = 30.0
"""A simulated month, for false alarms per month."""


# ----------------------------------------------------------------------------------------------
# argument checks


def _series(series: object, name: str = "series") -> np.ndarray:
    """``series`` as a float array of shape ``(n_bins,)`` or ``(n_bins, n_series)`` without NaN or infinity."""
    if isinstance(series, (str, bytes)) or not hasattr(series, "__len__"):
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {type(series).__name__}")
    try:
        values = np.asarray(series, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must hold numbers only") from None
    if values.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (one value per time bin) or 2-D (bins x series), got shape {values.shape}"
        )
    if values.size == 0:
        raise ValueError(f"{name} is empty: a detector needs at least one time bin")
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        where = ", ".join(str(int(i)) for i in bad[0])
        raise ValueError(
            f"{name}[{where}] is {values[tuple(bad[0])]}: detectors need finite values "
            f"({len(bad)} bad values); fill empty bins with 0 or drop them first"
        )
    return values


def _window(window: object, n: int) -> int:
    window = require_int("window", window, minimum=2)
    if window >= n:
        raise ValueError(
            f"window={window} is not shorter than the series ({n} bins): the baseline needs "
            "earlier bins to compare with; use a shorter window or a longer series"
        )
    return window


def _number(name: str, value: object) -> float:
    """``value`` as a finite float, or a clear error (booleans and strings are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _positive(name: str, value: object) -> float:
    value = _number(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _non_negative(name: str, value: object) -> float:
    value = _number(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------
# counting and the sentiment index


def bin_counts(
    times: Sequence[float],
    topics: Sequence[int],
    labels: Sequence[int],
    *,
    n_topics: int,
    n_labels: int,
    bin_width: float,
    duration: float,
) -> np.ndarray:
    """Counts of events per ``(bin, topic, label)``: an int array of shape ``(n_bins, n_topics, n_labels)``.

    Event ``i`` happens at ``times[i]`` (in ``[0, duration)``, e.g. days) and has topic
    ``topics[i]`` and label ``labels[i]``. Bin ``b`` covers ``[b * bin_width, (b + 1) * bin_width)``;
    ``n_bins = ceil(duration / bin_width)``.
    """
    n_topics = require_int("n_topics", n_topics, minimum=1)
    n_labels = require_int("n_labels", n_labels, minimum=1)
    bin_width = _positive("bin_width", bin_width)
    duration = _positive("duration", duration)
    times_a = np.asarray(times, dtype=float)
    topics_a = np.asarray(topics)
    labels_a = np.asarray(labels)
    if not (times_a.ndim == topics_a.ndim == labels_a.ndim == 1) or not len(times_a) == len(topics_a) == len(labels_a):
        raise ValueError(
            "times, topics and labels must be 1-D and of one length, "
            f"got {times_a.shape}, {topics_a.shape}, {labels_a.shape}"
        )
    if times_a.size and (not np.isfinite(times_a).all() or times_a.min() < 0 or times_a.max() >= duration):
        raise ValueError(f"times must be finite and in [0, duration={duration})")
    for name, values, upper in (("topics", topics_a, n_topics), ("labels", labels_a, n_labels)):
        if values.size and (not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() >= upper):
            raise ValueError(f"{name} must be integer ids in [0, {upper - 1}]")
    n_bins = int(math.ceil(duration / bin_width - 1e-9))
    bins = np.minimum((times_a / bin_width).astype(int), n_bins - 1)
    counts = np.zeros((n_bins, n_topics, n_labels), dtype=np.int64)
    np.add.at(counts, (bins, topics_a.astype(int), labels_a.astype(int)), 1)
    return counts


def sentiment_index(
    counts: np.ndarray, *, positive_label: int, negative_label: int, window: int = 1
) -> np.ndarray:
    """Rolling sentiment index per bin and topic: ``(positive - negative) / all`` over the last ``window`` bins.

    ``counts`` is :func:`bin_counts`' ``(n_bins, n_topics, n_labels)``. The result has shape
    ``(n_bins, n_topics)`` with values in ``[-1, 1]`` (+1: all positive, -1: all negative), and NaN
    where a topic had no events in the window.
    """
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.shape[0] == 0:
        raise ValueError(f"counts must have shape (n_bins, n_topics, n_labels), got {counts.shape}")
    window = require_int("window", window, minimum=1)
    n_labels = counts.shape[2]
    for name, label in (("positive_label", positive_label), ("negative_label", negative_label)):
        require_int(name, label, minimum=0, maximum=n_labels - 1)
    cumulative = np.concatenate([np.zeros((1, *counts.shape[1:])), np.cumsum(counts, axis=0)])
    start = np.maximum(np.arange(1, counts.shape[0] + 1) - window, 0)
    summed = cumulative[1:] - cumulative[start]  # the last `window` bins (fewer at the start)
    total = summed.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        index = (summed[:, :, positive_label] - summed[:, :, negative_label]) / total
    return np.where(total > 0, index, np.nan)


# ----------------------------------------------------------------------------------------------
# detectors


def _rolling_baseline(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the ``window`` bins before each bin (NaN for the first ``window``)."""
    mean = np.full(values.shape, np.nan)
    std = np.full(values.shape, np.nan)
    if values.shape[0] > window:
        # windows[t] holds bins t .. t + window - 1, so windows[:-1] are the baselines of bins window .. n - 1
        windows = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)[:-1]
        mean[window:] = windows.mean(axis=-1)
        std[window:] = windows.std(axis=-1)
    return mean, std


def rolling_zscore(series: Sequence[float], window: int, *, min_std: float = 1.0) -> np.ndarray:
    """How unusual each bin is: ``(x[t] - mean) / max(std, min_std)`` over the ``window`` bins before ``t``.

    The first ``window`` bins have no baseline and get NaN. ``min_std`` keeps a quiet baseline
    (e.g. a topic with no negative tweets for a week, std 0) from turning one tweet into an
    infinite score; for counts per bin, 1 (one event) is a natural floor.
    """
    values = _series(series)
    window = _window(window, values.shape[0])
    min_std = _positive("min_std", min_std)
    mean, std = _rolling_baseline(values, window)
    return (values - mean) / np.maximum(std, min_std)


def zscore_alarms(series: Sequence[float], window: int, threshold: float, *, min_std: float = 1.0) -> np.ndarray:
    """Boolean alarm per bin: :func:`rolling_zscore` above ``threshold`` (never during the first ``window`` bins)."""
    threshold = _number("threshold", threshold)
    z = rolling_zscore(series, window, min_std=min_std)
    return np.nan_to_num(z, nan=-np.inf) > threshold


def cusum(
    series: Sequence[float], window: int, *, k: float = 0.5, h: float = 5.0, min_std: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Page's one-sided (upward) CUSUM with a rolling baseline; returns ``(statistic, alarms)``.

    Each bin is standardised against the ``window`` bins before it, ``z = (x - mean) / max(std,
    min_std)``; the statistic accumulates what exceeds the allowance ``k``,
    ``S[t] = max(0, S[t-1] + z - k)``, and an alarm fires when ``S[t] > h``, after which ``S``
    restarts from 0. The baseline is frozen while ``S > 0`` (the last baseline before the
    excursion is kept), so a slow surge cannot drag the baseline up and hide itself. Small ``k``
    and ``h`` react faster but alarm more often. The first ``window`` bins have ``S = 0`` and no alarm.
    """
    values = _series(series)
    window = _window(window, values.shape[0])
    k = _non_negative("k", k)
    h = _positive("h", h)
    min_std = _positive("min_std", min_std)
    mean, std = _rolling_baseline(values, window)
    statistic = np.zeros(values.shape)
    alarms = np.zeros(values.shape, dtype=bool)
    s = np.zeros(values.shape[1:])  # a 2-D input runs every column at once
    base_mean, base_std = mean[window], std[window]
    for t in range(window, values.shape[0]):
        # keep the baseline frozen while S > 0; otherwise take the window just before t
        base_mean = np.where(s > 0, base_mean, mean[t])
        base_std = np.where(s > 0, base_std, std[t])
        s = np.maximum(0.0, s + (values[t] - base_mean) / np.maximum(base_std, min_std) - k)
        fired = s > h
        alarms[t] = fired
        s = np.where(fired, 0.0, s)
        statistic[t] = s
    return statistic, alarms


def cusum_alarms(
    series: Sequence[float], window: int, *, k: float = 0.5, h: float = 5.0, min_std: float = 1.0
) -> np.ndarray:
    """Boolean alarm per bin of :func:`cusum`."""
    return cusum(series, window, k=k, h=h, min_std=min_std)[1]


def alarm_onsets(alarms: Sequence[bool]) -> np.ndarray:
    """Bins where an alarm starts (alarming now, not in the bin before): one alert per episode."""
    flags = np.asarray(alarms)
    if flags.ndim != 1 or flags.dtype != bool:
        raise ValueError("alarms must be a 1-D boolean array (one flag per bin)")
    previous = np.concatenate([[False], flags[:-1]])
    return np.flatnonzero(flags & ~previous)


def detect_by_topic(
    series_by_topic: np.ndarray, detector: Callable[..., np.ndarray], **params: object
) -> list[tuple[int, int]]:
    """``(topic, onset bin)`` of every alarm episode of ``detector(series_by_topic, **params)``, sorted by bin.

    ``series_by_topic`` has shape ``(n_bins, n_topics)``; the detectors of this module treat each
    column as an independent series.
    """
    series_by_topic = np.asarray(series_by_topic)
    if series_by_topic.ndim != 2:
        raise ValueError(f"series_by_topic must have shape (n_bins, n_topics), got {series_by_topic.shape}")
    if not callable(detector):
        raise TypeError("detector must be a function series -> boolean alarms, e.g. zscore_alarms")
    alarms = np.asarray(detector(series_by_topic, **params))
    if alarms.shape != series_by_topic.shape:
        raise ValueError(f"the detector returned shape {alarms.shape} for series of shape {series_by_topic.shape}")
    found = [(topic, int(b)) for topic in range(alarms.shape[1]) for b in alarm_onsets(alarms[:, topic])]
    return sorted(found, key=lambda pair: (pair[1], pair[0]))


# ----------------------------------------------------------------------------------------------
# the simulated stream


@dataclass(frozen=True)
class SimulatedStream:
    """One simulated stream: which pool rows arrive when, and where the injected surge is.

    ``times`` (days, sorted) and ``rows`` (indices into the pool) describe every arrival;
    ``injected`` marks the surge's extra arrivals. The surge adds negative texts about
    ``surge_topic`` during ``[surge_start, surge_end)`` days.
    """

    times: np.ndarray
    rows: np.ndarray
    injected: np.ndarray
    days: float
    surge_topic: int
    surge_start: float
    surge_end: float

    def __len__(self) -> int:
        return int(self.rows.size)


def simulate_stream(
    pool_topics: Sequence[int],
    pool_labels: Sequence[int],
    *,
    negative_label: int,
    seed: int,
    days: float = 30.0,
    per_day: float = 400.0,
    surge_factor: float = 3.0,
    surge_days: float = 2.0,
    earliest_start: float = 10.0,
    surge_topics: Sequence[int] | None = None,
) -> SimulatedStream:
    """Replay a labelled pool as a stream of ``days`` days with one injected negative surge.

    Background: a Poisson number of arrivals (mean ``per_day * days``) at uniform random times,
    each a row of the pool drawn uniformly with replacement, so each topic and label keeps its
    share in the pool. Surge: one topic (drawn from ``surge_topics``, default every topic that has
    negative rows) gets extra arrivals during ``surge_days`` days starting uniformly in
    ``[earliest_start, days - surge_days]``; they are rows of that topic whose label (in
    ``pool_labels``, the *true* labels) is ``negative_label``, at ``surge_factor`` times that
    topic's normal negative rate. So during the surge the topic has ``1 + surge_factor`` times its
    usual number of negative texts. The same ``seed`` gives the same stream.
    """
    topics = np.asarray(pool_topics)
    labels = np.asarray(pool_labels)
    if topics.ndim != 1 or labels.shape != topics.shape or topics.size == 0:
        raise ValueError(
            "pool_topics and pool_labels must be 1-D, non-empty and of one length; "
            f"got {topics.shape}, {labels.shape}"
        )
    if not np.issubdtype(topics.dtype, np.integer) or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError("pool_topics and pool_labels must be integer ids")
    negative_label = require_int("negative_label", negative_label)
    seed = require_int("seed", seed, minimum=0)
    days = _positive("days", days)
    per_day = _positive("per_day", per_day)
    surge_factor = _positive("surge_factor", surge_factor)
    surge_days = _positive("surge_days", surge_days)
    earliest_start = _non_negative("earliest_start", earliest_start)
    if earliest_start + surge_days > days:
        raise ValueError(
            f"earliest_start + surge_days = {earliest_start + surge_days} is beyond the stream's {days} days"
        )
    negative = labels == negative_label
    with_negatives = sorted(set(topics[negative].tolist()))
    if surge_topics is None:
        candidates = with_negatives
    else:
        candidates = [require_int(f"surge_topics[{i}]", t) for i, t in enumerate(surge_topics)]
        missing = [t for t in candidates if t not in with_negatives]
        if not candidates or missing:
            raise ValueError(
                f"surge_topics must be a non-empty list of topics that have texts labelled {negative_label} "
                f"in the pool; {missing or 'none'} given without such texts"
            )
    if not candidates:
        raise ValueError(f"the pool has no text labelled negative_label={negative_label}: nothing to inject")
    rng = np.random.default_rng(seed)
    n = rng.poisson(per_day * days)
    times = rng.uniform(0.0, days, size=n)
    rows = rng.integers(0, topics.size, size=n)
    surge_topic = int(candidates[rng.integers(len(candidates))])
    start = float(rng.uniform(earliest_start, days - surge_days))
    surge_rows = np.flatnonzero(negative & (topics == surge_topic))
    normal_negative_per_day = per_day * surge_rows.size / topics.size
    extra = rng.poisson(surge_factor * normal_negative_per_day * surge_days)
    extra_times = rng.uniform(start, start + surge_days, size=extra)
    extra_rows = surge_rows[rng.integers(0, surge_rows.size, size=extra)]
    all_times = np.concatenate([times, extra_times])
    order = np.argsort(all_times, kind="stable")
    injected = np.concatenate([np.zeros(n, bool), np.ones(extra, bool)])[order]
    return SimulatedStream(
        times=all_times[order], rows=np.concatenate([rows, extra_rows])[order], injected=injected,
        days=days, surge_topic=surge_topic, surge_start=start, surge_end=start + surge_days,
    )


# ----------------------------------------------------------------------------------------------
# scoring


def score_alarms(
    alarms: Sequence[tuple[int, int]],
    *,
    surge_topic: int,
    surge_start: float,
    surge_end: float,
    bin_width: float,
    grace: float = 0.0,
) -> dict[str, float]:
    """Score the ``(topic, onset bin)`` alarms of one stream against its known surge.

    An alarm on ``surge_topic`` whose bin ends after ``surge_start`` and starts before
    ``surge_end + grace`` detects the surge; its *delay* is the end of that bin (when the alert
    can be sent) minus ``surge_start``, in the time unit of ``bin_width`` (days). Every other alarm
    (another topic, or the surge topic outside that window) is a false alarm.
    Returns ``{"detected": 0/1, "delay": days or NaN, "false_alarms": count}``.
    """
    bin_width = _positive("bin_width", bin_width)
    grace = _non_negative("grace", grace)
    delay, false_alarms = math.nan, 0
    for topic, onset in sorted(alarms, key=lambda a: a[1]):
        begin, end = onset * bin_width, (onset + 1) * bin_width
        if topic == surge_topic and end > surge_start and begin < surge_end + grace:
            if math.isnan(delay):
                delay = end - surge_start
        else:
            false_alarms += 1
    return {"detected": float(not math.isnan(delay)), "delay": delay, "false_alarms": float(false_alarms)}


def summarize_detections(scores: Sequence[Mapping[str, float]], *, days_per_stream: float) -> dict[str, float]:
    """Detection rate, median and 90th-percentile delay (of detected surges) and false alarms per 30-day month."""
    if not scores:
        raise ValueError("scores is empty: score at least one stream with score_alarms")
    days_per_stream = _positive("days_per_stream", days_per_stream)
    detected = np.array([s["detected"] for s in scores], dtype=float)
    delays = np.array([s["delay"] for s in scores if s["detected"]], dtype=float)
    false_alarms = np.array([s["false_alarms"] for s in scores], dtype=float)
    months = len(scores) * days_per_stream / DAYS_PER_MONTH
    return {
        "streams": float(len(scores)),
        "detection_rate": float(detected.mean()),
        "median_delay": float(np.median(delays)) if delays.size else math.nan,
        "p90_delay": float(np.quantile(delays, 0.9)) if delays.size else math.nan,
        "false_alarms_per_month": float(false_alarms.sum() / months),
    }
