"""RIM rewards: judges (+ programmatic verifiers) → a score in [0, 1], a rationale and an
uncertainty, with an audit of every model call.

    from atlas_middleware.rim import RIMReward, record

    rim = RIMReward(small_model, large_model)
    reward = await rim.evaluate(task, answer, reference="42")
    record(reward, session_span.get_span_context())
"""

from atlas_middleware.rim.evaluator import RIMReward
from atlas_middleware.rim.judges import (
    DEFAULT_JUDGES,
    Judge,
    Verifier,
    VerifierCheck,
    as_verifier,
    exact_match,
    reference_match,
)
from atlas_middleware.rim.parsing import Principle, extract_json_object
from atlas_middleware.rim.result import AuditEntry, JudgeResult, Reward
from atlas_middleware.rim.spans import record

__all__ = [
    "DEFAULT_JUDGES",
    "AuditEntry",
    "Judge",
    "JudgeResult",
    "Principle",
    "RIMReward",
    "Reward",
    "Verifier",
    "VerifierCheck",
    "as_verifier",
    "exact_match",
    "extract_json_object",
    "record",
    "reference_match",
]
