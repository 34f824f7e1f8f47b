-- The review log: every approve / quarantine / undo (who, when, from where, with what note), and
-- per session the status and note it had before, so any action can be undone and audited.
CREATE TABLE review_actions (
    action_id TEXT PRIMARY KEY,
    created_ns BIGINT NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    note TEXT,
    sessions BIGINT NOT NULL DEFAULT 0,
    changed BIGINT NOT NULL DEFAULT 0,
    detail JSONB,
    undoes TEXT,
    undone_by TEXT
);
CREATE INDEX review_actions_created ON review_actions (created_ns, action_id);
CREATE TABLE review_changes (
    action_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    previous_status TEXT NOT NULL,
    previous_note TEXT,
    PRIMARY KEY (action_id, trace_id)
);
CREATE INDEX review_changes_trace ON review_changes (trace_id);
-- The session list is newest first (sessions whose root has not arrived yet sort as time 0):
-- these serve that order, with and without a review-status filter, as an index walk that stops
-- after one page however many sessions are stored.
CREATE INDEX sessions_newest ON sessions ((COALESCE(started_ns, 0)), trace_id);
CREATE INDEX sessions_status_newest ON sessions (review_status, (COALESCE(started_ns, 0)), trace_id);
CREATE INDEX drift_alerts_trace ON drift_alerts (trace_id);
CREATE INDEX training_run_sessions_trace ON training_run_sessions (trace_id);
