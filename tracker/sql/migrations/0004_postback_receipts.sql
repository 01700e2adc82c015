-- Every inbound postback gets a receipt id at the edge. A postback queued during a
-- Postgres outage and applied later, or applied twice, keeps one log row per receipt.
ALTER TABLE postback_log ADD COLUMN receipt_id text;
UPDATE postback_log SET receipt_id = 'log-' || id;
ALTER TABLE postback_log
    ALTER COLUMN receipt_id SET NOT NULL,
    ALTER COLUMN receipt_id SET DEFAULT gen_random_uuid()::text;
CREATE UNIQUE INDEX postback_log_receipt ON postback_log (receipt_id);
-- Applied by the sink from the Redis queue (Postgres was unavailable when it arrived).
ALTER TABLE postback_log ADD COLUMN queued boolean NOT NULL DEFAULT false;
