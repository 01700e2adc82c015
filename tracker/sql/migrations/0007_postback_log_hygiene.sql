-- Failed postbacks are logged cut to a few KB; such rows say so.
ALTER TABLE postback_log ADD COLUMN truncated boolean NOT NULL DEFAULT false;
-- The orphan sweep and the retention clean-up look rows up by age.
CREATE INDEX postback_log_unmatched_time ON postback_log (received_at) WHERE result = 'unmatched';
