-- Conversions sent back to traffic sources: how each source wants them, and the outbox.

-- `template`: postback_url (GET) or postback_method POST with postback_body (JSON or form).
-- Presets post to an ad platform's conversion API with the ids and secrets in
-- postback_credentials. postback_statuses: which conversion statuses fire.
ALTER TABLE traffic_sources
    ADD COLUMN postback_preset text NOT NULL DEFAULT 'template'
        CHECK (postback_preset IN ('template', 'meta', 'tiktok', 'google_ads')),
    ADD COLUMN postback_method text NOT NULL DEFAULT 'GET'
        CHECK (postback_method IN ('GET', 'POST')),
    ADD COLUMN postback_body text,
    ADD COLUMN postback_body_format text NOT NULL DEFAULT 'json'
        CHECK (postback_body_format IN ('json', 'form')),
    ADD COLUMN postback_statuses text[] NOT NULL DEFAULT '{approved}',
    ADD COLUMN postback_status_map jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN postback_share numeric(7, 4) CHECK (postback_share > 0 AND postback_share <= 100),
    ADD COLUMN postback_credentials jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN postback_signing_secret text;

-- A campaign's own template, in place of its source's (the source's statuses, status map,
-- share and signing secret still apply).
ALTER TABLE campaigns
    ADD COLUMN postback_url text,
    ADD COLUMN postback_method text CHECK (postback_method IN ('GET', 'POST')),
    ADD COLUMN postback_body text,
    ADD COLUMN postback_body_format text CHECK (postback_body_format IN ('json', 'form'));

-- What the platforms match a conversion on, copied from the click with the other facts.
ALTER TABLE conversions
    ADD COLUMN click_params jsonb,
    ADD COLUMN ip text,
    ADD COLUMN user_agent text,
    ADD COLUMN cost numeric(18, 6);

-- One delivery per conversion change a source asked for. `status` and `payout` are what
-- the change reports (a chargeback or refund as a negative payout), fixed at creation so
-- that every attempt sends the same thing.
CREATE TABLE deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversion_id bigint NOT NULL REFERENCES conversions (id) ON DELETE CASCADE,
    history_id bigint NOT NULL UNIQUE,
    traffic_source_id bigint NOT NULL,
    campaign_id bigint NOT NULL,
    status text NOT NULL,
    payout numeric(18, 6),
    currency char(3) NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    -- Counts every claim and never goes back (a retry resets `attempts`): a sender may
    -- record an attempt only while the lease it claimed is the current one.
    lease bigint NOT NULL DEFAULT 0,
    -- When a sender may take it next: now for a new one, later for a retry, and while
    -- a sender holds it, the end of that sender's lease.
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    last_error text
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_created ON deliveries (created_at);
CREATE INDEX deliveries_conversion ON deliveries (conversion_id);

CREATE TABLE delivery_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL,
    status_code integer,
    latency_ms integer,
    response text,
    error text
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);

-- Every conversion change is a conversion_history row, written in the transaction of the
-- change; the deliveries it causes are written by this trigger in the same statement, so
-- neither can exist without the other. A new conversion or a status change fires when its
-- status is listed; a partial refund fires as `chargeback` when that is listed.
-- Planned afresh on every call (force_custom_plan): a plan cached while `conversions` was
-- small would keep scanning it whole as it grows, for as long as the connection lives.
CREATE FUNCTION enqueue_deliveries() RETURNS trigger
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM traffic_sources
        WHERE postback_url IS NOT NULL OR postback_preset <> 'template'
    ) AND NOT EXISTS (SELECT 1 FROM campaigns WHERE postback_url IS NOT NULL) THEN
        RETURN NULL;  -- no source is sent anything
    END IF;
    INSERT INTO deliveries (
        conversion_id, history_id, traffic_source_id, campaign_id, status, payout, currency
    )
    SELECT h.conversion_id, h.id, c.traffic_source_id, c.campaign_id, e.status,
           -- A chargeback takes back what partial refunds have not taken back already.
           CASE WHEN h.refund > 0 THEN -h.refund
                WHEN e.status = 'chargeback' THEN -greatest(abs(h.payout) - c.refunded, 0)
                ELSE h.payout END,
           c.currency
    FROM added h
    JOIN conversions c ON c.id = h.conversion_id
    JOIN traffic_sources s ON s.id = c.traffic_source_id
    LEFT JOIN campaigns cp ON cp.id = c.campaign_id
    CROSS JOIN LATERAL (
        SELECT CASE WHEN h.refund > 0 THEN 'chargeback' ELSE h.new_status END AS status
    ) e
    WHERE e.status = ANY (s.postback_statuses)
      AND (h.refund > 0 OR h.old_status IS DISTINCT FROM h.new_status)
      AND (s.postback_url IS NOT NULL OR s.postback_preset <> 'template'
           OR cp.postback_url IS NOT NULL)
    ORDER BY h.id;
    IF FOUND THEN
        PERFORM pg_notify('tracker_deliveries', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER conversion_history_deliveries
    AFTER INSERT ON conversion_history
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION enqueue_deliveries();
