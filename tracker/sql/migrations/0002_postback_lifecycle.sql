-- Per-network postback handling: status words, duplicates, and authentication.
ALTER TABLE affiliate_networks
    ADD COLUMN status_map jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN duplicate_policy text NOT NULL DEFAULT 'txid'
        CHECK (duplicate_policy IN ('txid', 'ignore', 'accept')),
    ADD COLUMN require_token boolean NOT NULL DEFAULT true,
    ADD COLUMN ip_allowlist text[] NOT NULL DEFAULT '{}',
    ADD COLUMN signing_secret text;

ALTER TABLE campaigns ADD COLUMN report_currency char(3) NOT NULL DEFAULT 'USD';

-- Rates against the pivot currency (USD): one unit of `currency` is worth `rate` USD
-- from `valid_from` until the next row for that currency.
CREATE TABLE currency_rates (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    currency char(3) NOT NULL,
    rate numeric(24, 12) NOT NULL CHECK (rate > 0),
    valid_from date NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (currency, valid_from)
);

-- Conversions: `payout`/`currency` are now in the campaign's report currency (payout is
-- NULL until a missing rate is set); what the network sent is kept as original_*.
-- `dedupe_key` applies the network's duplicate policy; `refunded` sums partial refunds.
ALTER TABLE conversions
    ADD COLUMN dedupe_key text,
    ADD COLUMN network_id bigint,
    ADD COLUMN original_payout numeric(18, 6),
    ADD COLUMN original_currency char(3),
    ADD COLUMN parent_txid text,
    ADD COLUMN refunded numeric(18, 6) NOT NULL DEFAULT 0,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ALTER COLUMN payout DROP NOT NULL;
UPDATE conversions
SET dedupe_key = txid, original_payout = payout, original_currency = currency;
ALTER TABLE conversions
    ALTER COLUMN dedupe_key SET NOT NULL,
    ALTER COLUMN original_currency SET NOT NULL,
    DROP CONSTRAINT conversions_click_txid,
    ADD CONSTRAINT conversions_click_dedupe UNIQUE (click_id, dedupe_key);
CREATE INDEX conversions_click_txid ON conversions (click_id, txid);
CREATE INDEX conversions_unconverted ON conversions (original_currency) WHERE payout IS NULL;

-- Every change of a conversion, creation included.
CREATE TABLE conversion_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversion_id bigint NOT NULL REFERENCES conversions (id),
    old_status text,
    new_status text NOT NULL,
    payout numeric(18, 6),
    refund numeric(18, 6) NOT NULL DEFAULT 0,
    refund_key text,
    created_at timestamptz NOT NULL DEFAULT now(),
    params jsonb NOT NULL
);
CREATE INDEX conversion_history_conversion ON conversion_history (conversion_id, id);
-- A refund is applied once however often its postback is repeated.
CREATE UNIQUE INDEX conversion_history_refund ON conversion_history (conversion_id, refund_key)
    WHERE refund_key IS NOT NULL;

-- Every inbound postback and what became of it; replaces unmatched_postbacks.
CREATE TABLE postback_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    network_id bigint,
    click_id text,
    result text NOT NULL,
    reason text,
    conversion_id bigint,
    client_ip text,
    method text NOT NULL,
    raw text NOT NULL,
    signature text,
    signature_ts text,
    path_token text,
    params jsonb NOT NULL,
    rematched_at timestamptz
);
CREATE INDEX postback_log_time ON postback_log (received_at);
CREATE INDEX postback_log_unmatched ON postback_log (click_id) WHERE result = 'unmatched';
INSERT INTO postback_log (received_at, click_id, result, reason, method, raw, params)
SELECT received_at, click_id,
       CASE reason WHEN 'unknown_click' THEN 'unmatched'
                   WHEN 'bad_token' THEN 'rejected-auth'
                   ELSE 'invalid' END,
       reason, 'GET', '', params
FROM unmatched_postbacks;
DROP TABLE unmatched_postbacks;
