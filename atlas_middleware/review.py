"""Review gate and reward drift.

A session's reward is compared with the last ``window`` rewards of the same learning key. Both
the z-score (mean/std) and the MAD z-score (median/MAD, robust to the outliers it is hunting) are
computed; an alert fires when both reach ``threshold`` with at least ``min_baseline`` sessions of
history. Requiring both keeps pass/fail rewards (MAD is often 0 there) from alerting on every
ordinary failure, while a real shift moves both. An alert sends the session back to review
whatever its status was, so a drifting agent's output never flows into training unseen.
"""

from __future__ import annotations

import getpass
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atlas_middleware.storage import Session, SessionFilter, Store

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

    def to_json(self) -> dict[str, Any]:
        # Written by hand: dataclasses.asdict deep-copies, and this runs per rewarded session
        # on the ingest path.
        return {"z": self.z, "mad_z": self.mad_z, "baseline": self.baseline, "alert": self.alert}


@dataclass(frozen=True, slots=True)
class Baseline:
    """What a drift check needs of a history, whatever the value checked against it: a batch
    checking many sessions of one learning key computes it once."""

    n: int
    mean: float = 0.0
    std: float = 0.0
    median: float = 0.0
    mad: float = 0.0
    mean_ad: float = 0.0

    @classmethod
    def of(cls, history: Sequence[float], policy: DriftPolicy = DriftPolicy()) -> Baseline:
        baseline = [float(v) for v in history[: policy.window]]
        n = len(baseline)
        if n < policy.min_baseline:
            return cls(n)
        # Plain float arithmetic: statistics.pstdev works in exact fractions and is ~50x
        # slower, and this runs on the ingest path.
        mean = math.fsum(baseline) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in baseline) / n)
        median = statistics.median(baseline)
        mad = statistics.median([abs(v - median) for v in baseline])
        mean_ad = math.fsum(abs(v - median) for v in baseline) / n
        return cls(n, mean, std, median, mad, mean_ad)


def drift(
    history: Sequence[float] | Baseline, value: float, policy: DriftPolicy = DriftPolicy()
) -> DriftResult:
    """Drift of ``value`` against ``history`` (most recent first; only ``policy.window`` used),
    or against its :class:`Baseline` computed once for many values."""
    stats = history if isinstance(history, Baseline) else Baseline.of(history, policy)
    if stats.n < policy.min_baseline:
        return DriftResult(None, None, stats.n, False)
    n, mean, std, median, mad, mean_ad = (
        stats.n,
        stats.mean,
        stats.std,
        stats.median,
        stats.mad,
        stats.mean_ad,
    )
    # A perfectly constant history has no spread: any departure from it is drift.
    z = (value - mean) / std if std > _EPS else _no_spread(value - mean)
    if mad > _EPS:
        mad_z = _MAD_SCALE * (value - median) / mad
    elif mean_ad > _EPS:
        mad_z = (value - median) / (_MEANAD_SCALE * mean_ad)
    else:
        mad_z = _no_spread(value - median)
    z_abs = abs(z)
    mad_abs = abs(mad_z)
    alert = z_abs >= policy.threshold and mad_abs >= policy.threshold
    return DriftResult(_finite(z), _finite(mad_z), n, alert)


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


# --- review actions: one code path for `atlas sessions approve/quarantine` and `atlas ui` -----
_CHUNK = 500  # sessions per store.set_review call (one transaction each)


def default_actor() -> str:
    """Who is reviewing: ``$ATLAS_REVIEWER``, else the login name."""
    name = os.environ.get("ATLAS_REVIEWER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


@dataclass(slots=True)
class ReviewOutcome:
    """What a review action did (or, with ``dry_run``, would do)."""

    status: str
    targets: dict[str, str]  # trace id -> review status before
    skipped_drift: int = 0
    dry_run: bool = False
    action_id: str | None = None  # its entry in the store's review log

    @property
    def changing(self) -> list[str]:
        return [t for t, before in self.targets.items() if before != self.status]

    @property
    def already(self) -> int:
        return len(self.targets) - len(self.changing)


def review_sessions(
    store: Store,
    sessions: Sequence[Session],
    status: str,
    *,
    note: str | None = None,
    actor: str | None = None,
    source: str = "api",
    dry_run: bool = False,
) -> ReviewOutcome:
    """Set the review status of the given sessions (approve or quarantine by id)."""
    outcome = ReviewOutcome(status, {s.trace_id: s.review_status for s in sessions}, 0, dry_run)
    if not dry_run and outcome.targets:
        outcome.action_id = _write(store, outcome, note, actor, source)
    return outcome


def review_pending(
    store: Store,
    where: SessionFilter,
    status: str,
    *,
    include_drift: bool = False,
    note: str | None = None,
    actor: str | None = None,
    source: str = "api",
    dry_run: bool = False,
) -> ReviewOutcome:
    """Approve (or quarantine) every pending session matching ``where``. Approving skips
    sessions with a drift alert unless ``include_drift``: a drifting agent's output is never
    approved in bulk unseen. Both conditions are checked again at write time, so a session
    quarantined or flagged since it was listed keeps that state."""
    import dataclasses

    outcome = ReviewOutcome(status, {}, 0, dry_run)
    skip_drift = status == "approved" and not include_drift
    pending = dataclasses.replace(where, review_status="pending")
    for trace_id, status_before, flagged in store.iter_review_states(pending):
        if skip_drift and flagged:
            outcome.skipped_drift += 1
        else:
            outcome.targets[trace_id] = status_before
    if not dry_run and outcome.targets:
        detail = {
            "filter": {
                name: value
                for name, value in dataclasses.asdict(where).items()
                if value not in (None, False) and name != "review_status"
            },
            "include_drift": include_drift,
            "skipped_drift": outcome.skipped_drift,
        }
        outcome.action_id = _write(
            store, outcome, note, actor, source, bulk=True, unless_drift=skip_drift, detail=detail
        )
    return outcome


def _write(
    store: Store,
    outcome: ReviewOutcome,
    note: str | None,
    actor: str | None,
    source: str,
    *,
    bulk: bool = False,
    unless_drift: bool = False,
    detail: dict[str, Any] | None = None,
) -> str:
    from atlas_middleware.storage.base import new_action_id

    action_id = new_action_id()
    ids = list(outcome.targets)
    for start in range(0, len(ids), _CHUNK):
        store.set_review(
            ids[start : start + _CHUNK],
            outcome.status,
            note,
            only_from=("pending",) if bulk else None,
            unless_drift=unless_drift,
            actor=actor or default_actor(),
            source=source,
            action_id=action_id,
            detail=detail,
        )
    return action_id
