-- Drift baselines are the most recent sessions of a learning key by session start time.
CREATE INDEX sessions_key_started ON sessions (learning_key, started_ns);
