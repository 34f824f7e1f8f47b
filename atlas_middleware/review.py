"""Review gate and reward drift.

A session's reward is compared with the last ``window`` rewards of the same learning key. Both
the z-score (mean/std) and the MAD z-score (median/MAD, robust to the outliers it is hunting) are
computed; an alert fires when both reach ``threshold`` with at least ``min_baseline`` sessions of
history. Requiring both keeps pass/fail rewards (MAD is often 0 there) from alerting on every
ordinary failure, while a real shift moves both. An alert sends the session back to review
whatever its status was, so a drifting agent's output never flows into training unseen.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# Constants that make MAD (and, when MAD is 0, the mean absolute deviation) comparable to a
# standard deviation under normality (Iglewicz & Hoaglin; IBM's modified z-score).
_MAD_SCALE = 0.6745
_MEANAD_SCALE = 1.253314
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class DriftPolicy:
    window: int = 50
    min_baseline: int = 5
    threshold: float = 3.0


@dataclass(frozen=True, slots=True)
class DriftResult:
    z: float | None
    mad_z: float | None
    baseline: int
    alert: bool

    def to_json(self) -> dict:
        return asdict(self)


def drift(
    history: Sequence[float], value: float, policy: DriftPolicy = DriftPolicy()
) -> DriftResult:
    """Drift of ``value`` against ``history`` (most recent first; only ``policy.window`` used)."""
    baseline = [float(v) for v in history[: policy.window]]
    if len(baseline) < policy.min_baseline:
        return DriftResult(None, None, len(baseline), False)
    # Plain float arithmetic: statistics.pstdev works in exact fractions and is ~50x slower,
    # and this runs for every rewarded session on the ingest path.
    n = len(baseline)
    mean = math.fsum(baseline) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in baseline) / n)
    median = statistics.median(baseline)
    mad = statistics.median([abs(v - median) for v in baseline])
    # A perfectly constant history has no spread: any departure from it is drift.
    z = (value - mean) / std if std > _EPS else _no_spread(value - mean)
    mean_ad = math.fsum(abs(v - median) for v in baseline) / n
    if mad > _EPS:
        mad_z = _MAD_SCALE * (value - median) / mad
    elif mean_ad > _EPS:
        mad_z = (value - median) / (_MEANAD_SCALE * mean_ad)
    else:
        mad_z = _no_spread(value - median)
    z_abs = abs(z)
    mad_abs = abs(mad_z)
    alert = z_abs >= policy.threshold and mad_abs >= policy.threshold
    return DriftResult(_finite(z), _finite(mad_z), len(baseline), alert)


def _no_spread(delta: float) -> float:
    # Signed: a drop below a constant history is -inf, not +inf.
    return 0.0 if abs(delta) <= _EPS else math.copysign(math.inf, delta)


def _finite(value: float) -> float:
    # JSON has no infinity; a huge finite number keeps the sign and sorts correctly.
    if value == float("inf"):
        return 1e9
    if value == float("-inf"):
        return -1e9
    return round(value, 4)
