-- Reward drift: the last check on each session, and a log of alerts.
ALTER TABLE sessions ADD COLUMN drift TEXT;
CREATE TABLE drift_alerts (
    trace_id TEXT NOT NULL,
    learning_key TEXT,
    reward REAL NOT NULL,
    z REAL,
    mad_z REAL,
    baseline INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE INDEX drift_alerts_key ON drift_alerts (learning_key, created_ns);
