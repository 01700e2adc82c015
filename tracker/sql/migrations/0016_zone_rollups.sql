-- Daily rollups in the zones reports are read in: per (zone, local day) click counters
-- and cost by campaign, offer, source and lander (`click_daily`) and by campaign, offer,
-- source and country (`click_daily_geo`), written by the sink's statements with the clicks
-- (moved by lander click-throughs and cost updates); conversion counters on the same keys,
-- dated by the click (`basis = 'click'`) and by the arrival (`'postback'`), from the
-- changes triggers on `conversions` record in the statement that writes or changes one.
-- Sink and conversion writers touch different tables, so they never wait on each other.

-- The zones whose local days are rolled up. A zone is added with its past rows backfilled
-- (tracker.store.rollups.sync_rollup_zones), so a listed zone's rollups are always whole.
CREATE TABLE rollup_zones (
    zone text PRIMARY KEY,
    added_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE click_daily (
    zone text NOT NULL,
    day date NOT NULL,
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    lander_id bigint,
    clicks bigint NOT NULL DEFAULT 0,
    bot_clicks bigint NOT NULL DEFAULT 0,
    unique_clicks bigint NOT NULL DEFAULT 0,
    lp_views bigint NOT NULL DEFAULT 0,
    lp_clicks bigint NOT NULL DEFAULT 0,
    cost numeric NOT NULL DEFAULT 0
);
-- Every batch updates its rows in place: room on the page keeps the updates HOT.
ALTER TABLE click_daily SET (fillfactor = 70);
CREATE UNIQUE INDEX click_daily_key ON click_daily
    (zone, day, campaign_id, offer_id, traffic_source_id, lander_id) NULLS NOT DISTINCT;

CREATE TABLE click_daily_geo (
    zone text NOT NULL,
    day date NOT NULL,
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    country text,
    clicks bigint NOT NULL DEFAULT 0,
    bot_clicks bigint NOT NULL DEFAULT 0,
    unique_clicks bigint NOT NULL DEFAULT 0,
    lp_views bigint NOT NULL DEFAULT 0,
    lp_clicks bigint NOT NULL DEFAULT 0,
    cost numeric NOT NULL DEFAULT 0
);
ALTER TABLE click_daily_geo SET (fillfactor = 70);
CREATE UNIQUE INDEX click_daily_geo_key ON click_daily_geo
    (zone, day, campaign_id, offer_id, traffic_source_id, country) NULLS NOT DISTINCT;

CREATE TABLE conversion_daily (
    zone text NOT NULL,
    basis text NOT NULL CHECK (basis IN ('click', 'postback')),
    day date NOT NULL,
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    lander_id bigint,
    conversions bigint NOT NULL DEFAULT 0,  -- approved
    leads bigint NOT NULL DEFAULT 0,
    pending bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0,
    chargebacks bigint NOT NULL DEFAULT 0,
    unconverted bigint NOT NULL DEFAULT 0,  -- approved, payout awaiting a rate
    revenue numeric NOT NULL DEFAULT 0  -- approved payouts less refunds (known payouts)
);
ALTER TABLE conversion_daily SET (fillfactor = 70);
CREATE UNIQUE INDEX conversion_daily_key ON conversion_daily
    (zone, basis, day, campaign_id, offer_id, traffic_source_id, lander_id) NULLS NOT DISTINCT;

CREATE TABLE conversion_daily_geo (
    zone text NOT NULL,
    basis text NOT NULL CHECK (basis IN ('click', 'postback')),
    day date NOT NULL,
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    country text,
    conversions bigint NOT NULL DEFAULT 0,
    leads bigint NOT NULL DEFAULT 0,
    pending bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0,
    chargebacks bigint NOT NULL DEFAULT 0,
    unconverted bigint NOT NULL DEFAULT 0,
    revenue numeric NOT NULL DEFAULT 0
);
ALTER TABLE conversion_daily_geo SET (fillfactor = 70);
CREATE UNIQUE INDEX conversion_daily_geo_key ON conversion_daily_geo
    (zone, basis, day, campaign_id, offer_id, traffic_source_id, country) NULLS NOT DISTINCT;

-- The statement that adds the conversions of `changed` (a query giving `sign`, +1 or -1,
-- and a conversion's columns: `conversions` or `conversion_changes`) to `tbl`, keyed by `fact`, for the zones `zones` selects
-- (a query on rollup_zones) and both bases. Groups whose counters do not move are skipped.
CREATE FUNCTION conversion_rollup_sql(tbl text, fact text, changed text, zones text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
SELECT format($f$
    INSERT INTO %1$I AS r (
        zone, basis, day, campaign_id, offer_id, traffic_source_id, %2$I,
        conversions, leads, pending, rejected, chargebacks, unconverted, revenue
    )
    SELECT * FROM (
        SELECT z.zone, b.basis,
               (CASE b.basis WHEN 'click' THEN c.click_time ELSE c.created_at END
                    AT TIME ZONE z.zone)::date AS day,
               c.campaign_id, c.offer_id, c.traffic_source_id, c.%2$I,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'approved'), 0) AS conversions,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'lead'), 0) AS leads,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'pending'), 0) AS pending,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'rejected'), 0) AS rejected,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'chargeback'), 0) AS chargebacks,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'approved' AND c.payout IS NULL),
                        0) AS unconverted,
               coalesce(sum(c.sign * (c.payout - c.refunded))
                            FILTER (WHERE c.status = 'approved'), 0) AS revenue
        FROM (%3$s) AS c
        CROSS JOIN (%4$s) AS z
        CROSS JOIN (VALUES ('click'), ('postback')) AS b (basis)
        GROUP BY 1, 2, 3, 4, 5, 6, 7
        ORDER BY 1, 2, 3, 4, 5, 6, 7
    ) AS g
    WHERE (conversions, leads, pending, rejected, chargebacks, unconverted, revenue)
          <> (0, 0, 0, 0, 0, 0, 0)
    ON CONFLICT (zone, basis, day, campaign_id, offer_id, traffic_source_id, %2$I)
    DO UPDATE SET conversions = r.conversions + EXCLUDED.conversions,
                  leads = r.leads + EXCLUDED.leads,
                  pending = r.pending + EXCLUDED.pending,
                  rejected = r.rejected + EXCLUDED.rejected,
                  chargebacks = r.chargebacks + EXCLUDED.chargebacks,
                  unconverted = r.unconverted + EXCLUDED.unconverted,
                  revenue = r.revenue + EXCLUDED.revenue
$f$, tbl, fact, changed, zones)
$$;

-- Conversion writers do not upsert the rollups themselves: many postbacks a second would
-- queue on the row locks of today's rollup rows and hold them until their commit. The
-- triggers append what changed to `conversion_changes` (one row per conversion inserted
-- or deleted, two per conversion updated: the old row taken away, the new one added), in
-- the writer's statement; the sink folds these rows into the rollups (one writer, in one
-- statement that deletes them), and reports add the rows not folded yet. No index: the
-- rows are only appended, and read whole.
CREATE TABLE conversion_changes (
    sign integer NOT NULL,
    click_time timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    lander_id bigint,
    country text,
    status text NOT NULL,
    payout numeric,
    refunded numeric NOT NULL
);

CREATE FUNCTION roll_conversions_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO conversion_changes (
        sign, click_time, created_at, campaign_id, offer_id, traffic_source_id, lander_id,
        country, status, payout, refunded
    )
    SELECT 1, click_time, created_at, campaign_id, offer_id, traffic_source_id, lander_id,
           country, status, payout, refunded
    FROM added;
    RETURN NULL;
END
$$;

CREATE FUNCTION roll_conversions_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO conversion_changes (
        sign, click_time, created_at, campaign_id, offer_id, traffic_source_id, lander_id,
        country, status, payout, refunded
    )
    SELECT -1, click_time, created_at, campaign_id, offer_id, traffic_source_id, lander_id,
           country, status, payout, refunded
    FROM removed
    UNION ALL
    SELECT 1, click_time, created_at, campaign_id, offer_id, traffic_source_id, lander_id,
           country, status, payout, refunded
    FROM added;
    RETURN NULL;
END
$$;

CREATE FUNCTION roll_conversions_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO conversion_changes (
        sign, click_time, created_at, campaign_id, offer_id, traffic_source_id, lander_id,
        country, status, payout, refunded
    )
    SELECT -1, click_time, created_at, campaign_id, offer_id, traffic_source_id, lander_id,
           country, status, payout, refunded
    FROM removed;
    RETURN NULL;
END
$$;

CREATE TRIGGER conversions_roll_insert AFTER INSERT ON conversions
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION roll_conversions_insert();
CREATE TRIGGER conversions_roll_update AFTER UPDATE ON conversions
    REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION roll_conversions_update();
CREATE TRIGGER conversions_roll_delete AFTER DELETE ON conversions
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION roll_conversions_delete();

-- UTC is rolled up from the start; other zones are added (and backfilled) by
-- tracker.store.rollups.sync_rollup_zones. What is stored already:
INSERT INTO rollup_zones (zone) VALUES ('UTC');
INSERT INTO click_daily (
    zone, day, campaign_id, offer_id, traffic_source_id, lander_id,
    clicks, bot_clicks, unique_clicks, lp_views, lp_clicks, cost
)
SELECT 'UTC', (created_at AT TIME ZONE 'UTC')::date, campaign_id, offer_id, traffic_source_id,
       lander_id,
       count(*) FILTER (WHERE NOT is_bot),
       count(*) FILTER (WHERE is_bot),
       count(*) FILTER (WHERE coalesce(is_unique, false) AND NOT is_bot),
       count(*) FILTER (WHERE lander_id IS NOT NULL AND NOT is_bot),
       count(*) FILTER (WHERE lp_clicked_at IS NOT NULL AND NOT is_bot),
       coalesce(sum(cost), 0)
FROM clicks
GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO click_daily_geo (
    zone, day, campaign_id, offer_id, traffic_source_id, country,
    clicks, bot_clicks, unique_clicks, lp_views, lp_clicks, cost
)
SELECT 'UTC', (created_at AT TIME ZONE 'UTC')::date, campaign_id, offer_id, traffic_source_id,
       country,
       count(*) FILTER (WHERE NOT is_bot),
       count(*) FILTER (WHERE is_bot),
       count(*) FILTER (WHERE coalesce(is_unique, false) AND NOT is_bot),
       count(*) FILTER (WHERE lander_id IS NOT NULL AND NOT is_bot),
       count(*) FILTER (WHERE lp_clicked_at IS NOT NULL AND NOT is_bot),
       coalesce(sum(cost), 0)
FROM clicks
GROUP BY 1, 2, 3, 4, 5, 6;
DO $$
BEGIN
    EXECUTE conversion_rollup_sql('conversion_daily', 'lander_id',
                                  'SELECT 1 AS sign, * FROM conversions', 'SELECT ''UTC''::text AS zone');
    EXECUTE conversion_rollup_sql('conversion_daily_geo', 'country',
                                  'SELECT 1 AS sign, * FROM conversions', 'SELECT ''UTC''::text AS zone');
END
$$;

-- Drill-downs of one campaign by a fact no rollup carries (sub ids): the index carries
-- what the click counters need, so they are read from it alone (an index-only scan)
-- instead of from heap pages shared with every other campaign's clicks.
DROP INDEX clicks_campaign_time;
CREATE INDEX clicks_campaign_time ON clicks (campaign_id, created_at)
    INCLUDE (sub1, is_bot, is_unique, lander_id, lp_clicked_at, cost);
