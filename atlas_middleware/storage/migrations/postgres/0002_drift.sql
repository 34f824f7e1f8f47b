-- Reward drift: the last check on each session, and a log of alerts.
ALTER TABLE sessions ADD COLUMN drift JSONB;
CREATE TABLE drift_alerts (
    trace_id TEXT NOT NULL,
    learning_key TEXT,
    reward DOUBLE PRECISION NOT NULL,
    z DOUBLE PRECISION,
    mad_z DOUBLE PRECISION,
    baseline INTEGER NOT NULL,
    created_ns BIGINT NOT NULL
);
CREATE INDEX drift_alerts_key ON drift_alerts (learning_key, created_ns);
