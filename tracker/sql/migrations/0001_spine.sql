-- Configuration: traffic sources, affiliate networks, offers, campaigns.
CREATE TABLE traffic_sources (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    postback_url text,
    external_id_param text NOT NULL DEFAULT 'external_id',
    cost_param text NOT NULL DEFAULT 'cost',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);

CREATE TABLE affiliate_networks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    postback_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);

CREATE TABLE offers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    url text NOT NULL,
    affiliate_network_id bigint NOT NULL REFERENCES affiliate_networks (id),
    payout numeric(18, 6),
    currency char(3) NOT NULL DEFAULT 'USD',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);

CREATE TABLE campaigns (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL UNIQUE,
    name text NOT NULL,
    traffic_source_id bigint NOT NULL REFERENCES traffic_sources (id),
    cost_model text NOT NULL DEFAULT 'none' CHECK (cost_model IN ('none', 'cpc', 'auto')),
    cost_value numeric(18, 6),
    attribution_window_days integer NOT NULL DEFAULT 30
        CHECK (attribution_window_days BETWEEN 1 AND 365),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);

CREATE TABLE campaign_offers (
    campaign_id bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    offer_id bigint NOT NULL REFERENCES offers (id),
    weight integer NOT NULL CHECK (weight >= 0),
    position integer NOT NULL,
    PRIMARY KEY (campaign_id, offer_id)
);

-- Clicks, written in batches by the sink from the Redis stream.
CREATE TABLE clicks (
    click_id text PRIMARY KEY,
    created_at timestamptz NOT NULL,
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    external_id text,
    cost numeric(18, 6),
    sub1 text, sub2 text, sub3 text, sub4 text, sub5 text,
    sub6 text, sub7 text, sub8 text, sub9 text, sub10 text,
    params jsonb,
    ip text,
    user_agent text,
    referrer text
);
CREATE INDEX clicks_campaign_time ON clicks (campaign_id, created_at);

-- Per-day click counts and cost, maintained in the same transaction as the click rows.
CREATE TABLE click_rollups (
    day date NOT NULL,
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    clicks bigint NOT NULL,
    cost numeric(20, 6) NOT NULL,
    PRIMARY KEY (day, campaign_id, offer_id, traffic_source_id)
);

-- Stream entries that could not be stored, kept for inspection instead of dropped.
CREATE TABLE click_dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id text NOT NULL,
    payload text NOT NULL,
    error text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Conversions, joined with their click so reports never need the clicks table.
CREATE TABLE conversions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    click_id text NOT NULL,
    txid text NOT NULL DEFAULT '',
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    external_id text,
    sub1 text, sub2 text, sub3 text, sub4 text, sub5 text,
    sub6 text, sub7 text, sub8 text, sub9 text, sub10 text,
    click_time timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    payout numeric(18, 6) NOT NULL,
    currency char(3) NOT NULL,
    status text NOT NULL,
    event text,
    params jsonb NOT NULL,
    -- One conversion per click and transaction id; no txid is stored as ''.
    CONSTRAINT conversions_click_txid UNIQUE (click_id, txid)
);
CREATE INDEX conversions_time ON conversions (created_at);
CREATE INDEX conversions_campaign_time ON conversions (campaign_id, created_at);

-- Postbacks that did not become conversions (unknown click, bad input, bad token).
CREATE TABLE unmatched_postbacks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    click_id text,
    reason text NOT NULL,
    params jsonb NOT NULL
);
CREATE INDEX unmatched_postbacks_click ON unmatched_postbacks (click_id);
