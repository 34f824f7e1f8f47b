CREATE TABLE spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_time_unix_nano INTEGER NOT NULL,
    end_time_unix_nano INTEGER NOT NULL,
    status_code TEXT NOT NULL,
    status_message TEXT,
    service_name TEXT,
    operation TEXT,
    session_id TEXT,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    resource TEXT NOT NULL,
    scope TEXT,
    PRIMARY KEY (trace_id, span_id)
) WITHOUT ROWID;
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
    probe_confidence REAL,
    model TEXT,
    status TEXT,
    error_type TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    started_ns INTEGER,
    ended_ns INTEGER,
    evaluations TEXT NOT NULL DEFAULT '{}',
    reward_score REAL,
    review_status TEXT NOT NULL DEFAULT 'pending',
    review_note TEXT,
    updated_ns INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_started ON sessions (started_ns);
CREATE INDEX sessions_key ON sessions (learning_key, updated_ns);
CREATE INDEX sessions_session_id ON sessions (session_id);

CREATE TABLE playbooks (
    learning_key TEXT PRIMARY KEY,
    playbook TEXT NOT NULL,
    updated_ns INTEGER NOT NULL
);

CREATE TABLE training_runs (
    run_id TEXT PRIMARY KEY,
    checkpoint TEXT NOT NULL,
    recipe TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    created_ns INTEGER NOT NULL
);
CREATE TABLE training_run_sessions (
    run_id TEXT NOT NULL REFERENCES training_runs (run_id) ON DELETE CASCADE,
    trace_id TEXT NOT NULL,
    PRIMARY KEY (run_id, trace_id)
);
