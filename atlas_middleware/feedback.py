"""Scores from outside the session: a user's thumbs-up, a support agent's verdict, a downstream
check that ran an hour later. ::

    answer = solve(task)
    session = atlas.last_session()        # or atlas.current_session() inside the call
    ...
    atlas.feedback(session, 1.0, name="thumbs", explanation="the user accepted the answer")
    atlas.feedback("4bf92f35…", 0.0)       # a session id or a trace id, from anywhere

Each call records one ``gen_ai.evaluation.result`` event on an evaluation span in the session's
trace, exactly like a RIM reward: through the collector or into the embedded store, it lands in
the session row's ``evaluations`` under its ``name`` (a later score with the same name replaces
the earlier one). The session's ``reward_score`` stays RIM's when RIM scored it; otherwise it is
the mean of its evaluations.
"""

from __future__ import annotations

import re
from typing import Any

from opentelemetry.trace import SpanContext, TraceFlags

from atlas_middleware.supervise import SessionHandle, recent_session
from atlas_middleware.telemetry import schema as s

__all__ = ["DEFAULT_NAME", "feedback"]

DEFAULT_NAME = "user_feedback"
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def feedback(
    session: SessionHandle | str,
    score: float,
    *,
    name: str = DEFAULT_NAME,
    label: str | None = None,
    explanation: str | None = None,
    config: Any = None,
) -> SessionHandle:
    """Record ``score`` (0..1; ``True``/``False`` mean 1/0) for ``session``: a
    :class:`SessionHandle` (``atlas.current_session()`` / ``atlas.last_session()``), a session id
    or a trace id (32 hex digits). Returns the session it was attached to.

    Raises ``ValueError`` for a score outside [0, 1] or an empty name, and ``LookupError`` for a
    session id this process has not run and the store (``config``'s, default
    ``AtlasConfig.load()``) does not hold."""
    if isinstance(score, bool):
        score = 1.0 if score else 0.0
    if not isinstance(score, int | float) or not 0.0 <= float(score) <= 1.0:
        raise ValueError(f"feedback score must be a number within [0, 1], got {score!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("feedback name must be a non-empty string")
    from atlas_middleware.config import AtlasConfig
    from atlas_middleware.supervise import configure_telemetry
    from atlas_middleware.telemetry import get_tracer

    cfg = config if config is not None else AtlasConfig.load()
    handle = resolve_session(session, cfg)
    configure_telemetry(cfg)
    parent = SpanContext(
        int(handle.trace_id, 16),
        int(handle.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    s.record_evaluation(
        get_tracer(),
        parent,
        name=name,
        score=float(score),
        label=label,
        explanation=explanation,
    )
    return handle


def resolve_session(session: SessionHandle | str, cfg: Any) -> SessionHandle:
    """The session ``session`` names: a handle as it is, a session id or trace id of this
    process, else of the store of ``cfg``, else a trace id as given. Raises LookupError."""
    if isinstance(session, SessionHandle):
        return session
    if not isinstance(session, str) or not session:
        raise TypeError(
            f"feedback() takes a SessionHandle, a session id or a trace id, got {session!r}"
        )
    known = recent_session(session)
    if known is not None:
        return known
    found = _stored(session, cfg)
    if found is not None:
        return found
    if _TRACE_ID.match(session):
        # A trace this process never saw and the store does not hold (yet): still its trace;
        # the evaluation's parent is the trace itself, which is all the store keys on.
        return SessionHandle(session, session, session[16:], "")
    raise LookupError(
        f"no session {session!r} in this process or in the store: pass the SessionHandle "
        "(atlas.last_session()) or the session's trace id"
    )


def _stored(key: str, cfg: Any) -> SessionHandle | None:
    """The session from the configured store (its root span id from its spans), or None when
    the store does not hold it or cannot be read."""
    from atlas_middleware.storage import open_store

    try:
        with open_store(cfg.storage.url) as store:
            row = store.get_session(key)
            if row is None:
                return None
            spans = store.spans_for([row.trace_id])[row.trace_id]
    except Exception:  # a store we cannot read: the caller may still give a trace id
        return None
    roots = [x for x in spans if x.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_SESSION]
    root = roots[-1] if roots else next((x for x in spans if x.parent_span_id is None), None)
    span_id = root.span_id if root is not None else row.trace_id[16:]
    return SessionHandle(row.session_id or key, row.trace_id, span_id, row.agent_name or "")
