-- Steps of a session (issue 17): each LangGraph node run, LlamaIndex workflow step, agent turn and
-- tool call inside a session, with its input, output, status, error, tokens and step rewards
-- (evaluations by name, as on sessions; reward_score: RIM's when it scored the step, else the
-- mean). Keyed like spans: a step is its span.
CREATE TABLE steps (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT,
    kind TEXT,
    started_ns BIGINT,
    ended_ns BIGINT,
    status TEXT,
    error_type TEXT,
    error TEXT,
    input TEXT,
    output TEXT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    evaluations JSONB NOT NULL DEFAULT '{}',
    reward_score DOUBLE PRECISION,
    updated_ns BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (trace_id, span_id)
);
