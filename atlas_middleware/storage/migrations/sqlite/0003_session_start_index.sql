-- Drift baselines are the most recent sessions of a learning key by session start time; this
-- index serves that query in order (a backward scan, no sort of the key's whole history). The
-- (learning_key, updated_ns) index it replaces had no reader left and cost every session write.
CREATE INDEX sessions_key_started ON sessions (learning_key, started_ns, trace_id);
DROP INDEX sessions_key;
