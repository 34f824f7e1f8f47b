-- Spans are range-partitioned by start time (one partition a day, created on demand) so retention
-- is DROP TABLE of old partitions. The primary key includes the partition key, as Postgres needs.
CREATE TABLE spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_time_unix_nano BIGINT NOT NULL,
    end_time_unix_nano BIGINT NOT NULL,
    status_code TEXT NOT NULL,
    status_message TEXT,
    service_name TEXT,
    operation TEXT,
    session_id TEXT,
    attributes JSONB NOT NULL,
    events JSONB NOT NULL,
    resource JSONB NOT NULL,
    scope TEXT,
    PRIMARY KEY (trace_id, span_id, start_time_unix_nano)
) PARTITION BY RANGE (start_time_unix_nano);
CREATE INDEX spans_start ON spans (start_time_unix_nano);
CREATE INDEX spans_session ON spans (session_id) WHERE session_id IS NOT NULL;

CREATE TABLE sessions (
    trace_id TEXT PRIMARY KEY,
    session_id TEXT,
    agent_name TEXT,
    learning_key TEXT,
    service_name TEXT,
    task TEXT,
    final_answer TEXT,
    guidance TEXT,
    lane TEXT,
    probe_confidence DOUBLE PRECISION,
    model TEXT,
    status TEXT,
    error_type TEXT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    started_ns BIGINT,
    ended_ns BIGINT,
    evaluations JSONB NOT NULL DEFAULT '{}',
    reward_score DOUBLE PRECISION,
    review_status TEXT NOT NULL DEFAULT 'pending'
        CHECK (review_status IN ('pending', 'approved', 'quarantined')),
    review_note TEXT,
    updated_ns BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_started ON sessions (started_ns);
CREATE INDEX sessions_key ON sessions (learning_key, updated_ns);
CREATE INDEX sessions_session_id ON sessions (session_id);

CREATE TABLE playbooks (
    learning_key TEXT PRIMARY KEY,
    playbook JSONB NOT NULL,
    updated_ns BIGINT NOT NULL
);

CREATE TABLE training_runs (
    run_id TEXT PRIMARY KEY,
    checkpoint TEXT NOT NULL,
    recipe TEXT NOT NULL,
    metrics JSONB NOT NULL DEFAULT '{}',
    created_ns BIGINT NOT NULL
);
CREATE TABLE training_run_sessions (
    run_id TEXT NOT NULL REFERENCES training_runs (run_id) ON DELETE CASCADE,
    trace_id TEXT NOT NULL,
    PRIMARY KEY (run_id, trace_id)
);
