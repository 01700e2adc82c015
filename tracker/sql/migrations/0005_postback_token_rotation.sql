-- Token rotation: the token a rotation replaced keeps working until the grace ends.
ALTER TABLE affiliate_networks
    ADD COLUMN previous_postback_token text,
    ADD COLUMN previous_token_expires_at timestamptz;
