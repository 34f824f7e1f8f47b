"""Reward drift: the pure rule (atlas_middleware.review.drift) and what the stores do with it."""

from __future__ import annotations

import random

import pytest

from atlas_middleware.review import DriftPolicy, DriftResult, drift
from atlas_middleware.storage import SessionFilter, open_store
from tests.storage.factories import (
    BASE_NS,
    session,
    split_evaluations,
    tid,
    trace_ids,
)
from tests.storage.factories import sdk_records as sdk


# --- the pure rule -----------------------------------------------------------------------------
def test_too_little_baseline_never_alerts():
    result = drift([0.9, 0.9, 0.9, 0.9], 0.0)
    assert result == DriftResult(z=None, mad_z=None, baseline=4, alert=False)
    assert not drift([], 0.0).alert


def test_constant_history_then_same_value_is_quiet():
    result = drift([0.8] * 10, 0.8)
    assert result == DriftResult(z=0.0, mad_z=0.0, baseline=10, alert=False)


@pytest.mark.parametrize(("value", "sign"), [(0.2, -1), (1.0, 1)])
def test_constant_history_then_any_departure_alerts(value, sign):
    result = drift([0.8] * 10, value)
    assert result.alert
    # No spread: the scores are "infinite", reported as a huge finite number with the sign.
    assert result.z == sign * 1e9 and result.mad_z == sign * 1e9
    assert result.baseline == 10


def test_pass_fail_rewards_ordinary_failure_is_not_drift():
    # An agent that fails about one time in six: a failure is ordinary. MAD is 0 on such data,
    # so the robust score alone would alert on every failure; the plain z-score keeps it quiet.
    history = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    result = drift(history, 0.0)
    assert not result.alert
    assert result.z is not None and abs(result.z) < 3
    assert result.mad_z is not None and result.mad_z <= -3  # robust score alone would fire
    assert not drift(history, 1.0).alert


def test_real_shift_alerts_with_both_scores_reported():
    rng = random.Random(7)
    history = [min(1.0, max(0.0, rng.gauss(0.8, 0.05))) for _ in range(40)]
    quiet = drift(history, 0.78)
    assert not quiet.alert and abs(quiet.z) < 3 and abs(quiet.mad_z) < 3
    shifted = drift(history, 0.2)
    assert shifted.alert
    assert shifted.z <= -3 and shifted.mad_z <= -3
    assert shifted.baseline == 40


def test_one_outlier_in_history_does_not_mask_a_shift():
    # The mean/std is inflated by an outlier in the baseline; the median/MAD is not.
    history = [0.9, 0.91, 0.89, 0.9, 0.92, 0.88, 0.9, 0.91, 0.0, 0.9]
    result = drift(history, 0.5)
    assert result.mad_z <= -3
    assert abs(result.z) < abs(result.mad_z)


def test_window_and_threshold():
    old = [0.1] * 100
    recent = [0.9] * 5
    policy = DriftPolicy(window=5, min_baseline=5)
    # Only the most recent `window` rewards count (history is most recent first).
    assert drift(recent + old, 0.9, policy) == DriftResult(0.0, 0.0, 5, False)
    assert drift(recent + old, 0.1, policy).alert
    assert drift([0.5] * 3, 0.0, DriftPolicy(min_baseline=3)).alert
    history = [0.5, 0.6, 0.5, 0.6, 0.5, 0.6]  # std 0.05, MAD 0.05
    assert drift(history, 0.8, DriftPolicy(threshold=3.0)).alert is True
    assert drift(history, 0.8, DriftPolicy(threshold=100.0)).alert is False
    # z = 4 but the robust score is below 3: both must reach the threshold.
    result = drift(history, 0.75)
    assert result.z == pytest.approx(4.0) and abs(result.mad_z) < 3 and not result.alert


def test_drift_result_json():
    assert drift([0.8] * 6, 0.1).to_json() == {
        "z": -1e9,
        "mad_z": -1e9,
        "baseline": 6,
        "alert": True,
    }


# --- in the stores -----------------------------------------------------------------------------
def baseline(store, n: int = 6, score: float = 0.8, key: str = "math") -> None:
    """``n`` earlier sessions of ``key`` with a steady reward, from real SDK spans."""
    store.write_spans(sdk(n, learning_key=key, score=score))


def late_reward(store, *, key: str, score: float, review: str) -> tuple[str, list]:
    """A session of ``key`` whose root lands and is reviewed before its reward arrives; returns
    its trace id and the evaluation spans still to send."""
    spans, evaluations = split_evaluations(sdk(1, learning_key=key, score=score))
    [trace] = trace_ids(spans)
    store.write_spans(spans)
    store.set_review([trace], review, note="by hand")
    return trace, evaluations


def test_drift_forces_review_except_quarantine(store):
    for key in ("math", "code", "prose"):
        baseline(store, key=key)
    drifting, drifting_eval = late_reward(store, key="math", score=0.1, review="approved")
    jailed, jailed_eval = late_reward(store, key="code", score=0.05, review="quarantined")
    ordinary, ordinary_eval = late_reward(store, key="prose", score=0.8, review="approved")

    assert store.write_spans(ordinary_eval).drift_alerts == 0
    sess = store.get_session(ordinary)
    assert sess.review_status == "approved"  # an ordinary reward keeps the decision
    assert sess.drift == {"z": 0.0, "mad_z": 0.0, "baseline": 6, "alert": False}
    assert store.drift_alerts() == []

    result = store.write_spans(drifting_eval)
    assert result.drift_alerts == 1
    sess = store.get_session(drifting)
    assert sess.review_status == "pending"  # approved, but drifting: back to review
    assert sess.review_note == "by hand"
    assert sess.reward_score == 0.1
    assert sess.drift["alert"] is True and sess.drift["baseline"] == 6
    [alert] = store.drift_alerts()
    assert alert["trace_id"] == drifting and alert["learning_key"] == "math"
    assert alert["reward"] == pytest.approx(0.1) and alert["baseline"] == 6
    assert alert["z"] == sess.drift["z"] and alert["mad_z"] == sess.drift["mad_z"]
    assert alert["z"] < 0 and alert["mad_z"] < 0  # a drop, reported as one

    assert store.write_spans(jailed_eval).drift_alerts == 1
    sess = store.get_session(jailed)
    assert sess.review_status == "quarantined"  # quarantine is never lifted by drift
    assert sess.drift["alert"] is True

    assert [a["trace_id"] for a in store.drift_alerts()] == [drifting, jailed]
    assert [a["trace_id"] for a in store.drift_alerts("math")] == [drifting]
    assert store.drift_alerts("prose") == []
    flagged = store.iter_sessions(SessionFilter(drift_only=True))
    assert sorted(x.trace_id for x in flagged) == sorted([drifting, jailed])
    flagged = store.iter_sessions(SessionFilter(drift_only=True, review_status="pending"))
    assert [x.trace_id for x in flagged] == [drifting]


def test_drift_history_is_per_learning_key(store):
    baseline(store, key="math")
    # A new key has no history of its own: no alert however far from "math" it is.
    result = store.write_spans(sdk(1, learning_key="poetry", score=0.0))
    assert result.drift_alerts == 0
    assert store.drift_alerts() == []
    # Sessions without a learning key learn (and drift) per agent.
    store.write_spans(sdk(6, agent="solo", learning_key=None, score=0.9))
    assert store.write_spans(sdk(1, agent="solo", learning_key=None, score=0.1)).drift_alerts == 1
    [alert] = store.drift_alerts()
    assert alert["learning_key"] == "solo"


def test_resent_drifting_evaluation_alerts_once_and_keeps_a_later_approval(store):
    """OTLP retries re-send batches on purpose: a duplicate must not log a second alert, nor undo
    the reviewer's decision taken after the first one."""
    baseline(store)
    records = sdk(1, score=0.1)
    [trace] = trace_ids(records)
    assert store.write_spans(records).drift_alerts == 1
    store.set_review([trace], "approved", note="checked the drift")
    again = store.write_spans(records)
    assert again.drift_alerts == 0
    assert len(store.drift_alerts()) == 1
    assert store.get_session(trace).review_status == "approved"
    # A genuinely new verdict on the session is checked again.
    _, [ev] = split_evaluations(records)
    ev.span_id = "f" * 16
    ev.events[0].attributes["gen_ai.evaluation.score.value"] = 0.05
    assert store.write_spans([ev]).drift_alerts == 1
    assert store.get_session(trace).review_status == "pending"


def test_evaluation_before_root_is_checked_once_the_root_says_its_key(store):
    """The reward can land before the root span (separate export batches). Without the root the
    session has no learning key; when the root arrives the drift check must still happen."""
    baseline(store)
    spans, evaluations = split_evaluations(sdk(1, score=0.1))
    [trace] = trace_ids(spans)
    assert store.write_spans(evaluations).drift_alerts == 0  # key unknown yet
    assert store.write_spans(spans).drift_alerts == 1
    sess = store.get_session(trace)
    assert sess.review_status == "pending" and sess.drift["alert"] is True
    assert sess.drift["baseline"] == 6
    assert [a["trace_id"] for a in store.drift_alerts("math")] == [trace]


def test_store_drift_policy_and_window(store_url):
    policy = DriftPolicy(window=5, min_baseline=5)
    with open_store(store_url, drift_policy=policy) as store:
        for i in range(4):
            store.write_spans(session(i, 0.1, start_ns=BASE_NS + i))
        # Four sessions of history: below min_baseline, no alert however far off.
        assert store.write_spans(session(4, 0.9, start_ns=BASE_NS + 4)).drift_alerts == 0
        for i in range(5, 9):  # recent regime: high rewards
            store.write_spans(session(i, 0.9, start_ns=BASE_NS + i))
        # The last five rewards are all 0.9: the older 0.1s are out of the window.
        assert store.write_spans(session(10, 0.9, start_ns=BASE_NS + 10)).drift_alerts == 0
        assert store.write_spans(session(11, 0.1, start_ns=BASE_NS + 11)).drift_alerts == 1
        assert store.get_session(tid(11)).drift["baseline"] == 5
