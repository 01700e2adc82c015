-- Signatures of signed postbacks already used, each with the receipt that used it.
-- Kept in Postgres, beside the conversions, so replay protection needs no Redis; rows
-- older than twice the signature window are deleted by the sink.
CREATE TABLE postback_signatures (
    signature text PRIMARY KEY,
    receipt_id text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX postback_signatures_claimed ON postback_signatures (claimed_at);
