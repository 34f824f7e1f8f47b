-- Token usage of a session split by whose model calls they were: the student (the supervised
-- agent) and the teacher (probe, guidance, validation, lessons). input_tokens / output_tokens stay
-- the total of both, null when either part is unknown.
ALTER TABLE sessions ADD COLUMN student_input_tokens INTEGER;
ALTER TABLE sessions ADD COLUMN student_output_tokens INTEGER;
ALTER TABLE sessions ADD COLUMN teacher_input_tokens INTEGER;
ALTER TABLE sessions ADD COLUMN teacher_output_tokens INTEGER;
