-- Weekly blocks beside the per-zone daily geo rollups (0016), in the same zones: `day` is
-- the Monday that starts the local week. A report over many days with no time dimension
-- reads whole weeks here and only the days at its edges from the daily tables, a few
-- thousand rows a block instead of a few thousand a day. The writers add to both in the
-- same statement, so a block is always the sum of its days.
CREATE TABLE click_weekly_geo (
    zone text NOT NULL,
    day date NOT NULL CHECK (extract(isodow FROM day) = 1),
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
ALTER TABLE click_weekly_geo SET (fillfactor = 70);
CREATE UNIQUE INDEX click_weekly_geo_key ON click_weekly_geo
    (zone, day, campaign_id, offer_id, traffic_source_id, country) NULLS NOT DISTINCT;

CREATE TABLE conversion_weekly_geo (
    zone text NOT NULL,
    basis text NOT NULL CHECK (basis IN ('click', 'postback')),
    day date NOT NULL CHECK (extract(isodow FROM day) = 1),
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
ALTER TABLE conversion_weekly_geo SET (fillfactor = 70);
CREATE UNIQUE INDEX conversion_weekly_geo_key ON conversion_weekly_geo
    (zone, basis, day, campaign_id, offer_id, traffic_source_id, country) NULLS NOT DISTINCT;

-- The conversion rollup statement learns the grain of its table ('day' or 'week').
DROP FUNCTION conversion_rollup_sql(text, text, text, text);
CREATE FUNCTION conversion_rollup_sql(tbl text, fact text, changed text, zones text, grain text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
SELECT format($f$
    INSERT INTO %1$I AS r (
        zone, basis, day, campaign_id, offer_id, traffic_source_id, %2$I,
        conversions, leads, pending, rejected, chargebacks, unconverted, revenue
    )
    SELECT * FROM (
        SELECT z.zone, b.basis,
               date_trunc(%5$L, CASE b.basis WHEN 'click' THEN c.click_time ELSE c.created_at END
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
$f$, tbl, fact, changed, zones, grain)
$$;

-- What is rolled up already: the weeks are the sums of the days.
INSERT INTO click_weekly_geo (
    zone, day, campaign_id, offer_id, traffic_source_id, country,
    clicks, bot_clicks, unique_clicks, lp_views, lp_clicks, cost
)
SELECT zone, date_trunc('week', day)::date, campaign_id, offer_id, traffic_source_id, country,
       sum(clicks), sum(bot_clicks), sum(unique_clicks), sum(lp_views), sum(lp_clicks), sum(cost)
FROM click_daily_geo
GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO conversion_weekly_geo (
    zone, basis, day, campaign_id, offer_id, traffic_source_id, country,
    conversions, leads, pending, rejected, chargebacks, unconverted, revenue
)
SELECT zone, basis, date_trunc('week', day)::date, campaign_id, offer_id, traffic_source_id,
       country, sum(conversions), sum(leads), sum(pending), sum(rejected), sum(chargebacks),
       sum(unconverted), sum(revenue)
FROM conversion_daily_geo
GROUP BY 1, 2, 3, 4, 5, 6, 7;
