-- Monthly blocks beside the per-zone daily and weekly geo rollups (0016, 0018), in the same
-- zones: `day` is the first day of the local calendar month. A report over a month or more
-- with no time dimension reads whole months here, and weeks and days only where the range
-- does not cover a month (or a month with a day or two taken away). The writers add to the
-- days, weeks and months in the same statement, so a block is always the sum of its days.
CREATE TABLE click_monthly_geo (
    zone text NOT NULL,
    day date NOT NULL CHECK (extract(day FROM day) = 1),
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
ALTER TABLE click_monthly_geo SET (fillfactor = 70);
CREATE UNIQUE INDEX click_monthly_geo_key ON click_monthly_geo
    (zone, day, campaign_id, offer_id, traffic_source_id, country) NULLS NOT DISTINCT;

CREATE TABLE conversion_monthly_geo (
    zone text NOT NULL,
    basis text NOT NULL CHECK (basis IN ('click', 'postback')),
    day date NOT NULL CHECK (extract(day FROM day) = 1),
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
ALTER TABLE conversion_monthly_geo SET (fillfactor = 70);
CREATE UNIQUE INDEX conversion_monthly_geo_key ON conversion_monthly_geo
    (zone, basis, day, campaign_id, offer_id, traffic_source_id, country) NULLS NOT DISTINCT;

-- What is rolled up already: the months are the sums of the days.
INSERT INTO click_monthly_geo (
    zone, day, campaign_id, offer_id, traffic_source_id, country,
    clicks, bot_clicks, unique_clicks, lp_views, lp_clicks, cost
)
SELECT zone, date_trunc('month', day)::date, campaign_id, offer_id, traffic_source_id, country,
       sum(clicks), sum(bot_clicks), sum(unique_clicks), sum(lp_views), sum(lp_clicks), sum(cost)
FROM click_daily_geo
GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO conversion_monthly_geo (
    zone, basis, day, campaign_id, offer_id, traffic_source_id, country,
    conversions, leads, pending, rejected, chargebacks, unconverted, revenue
)
SELECT zone, basis, date_trunc('month', day)::date, campaign_id, offer_id, traffic_source_id,
       country, sum(conversions), sum(leads), sum(pending), sum(rejected), sum(chargebacks),
       sum(unconverted), sum(revenue)
FROM conversion_daily_geo
GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- A sum of bigints as a bigint, its running total a plain bigint (int8pl: an overflow is an
-- error): the built-in sum(bigint) keeps a 128-bit total in memory of its own for every
-- group and returns numeric. Reports sum the rollups' counters with it.
CREATE AGGREGATE sum_bigint(bigint) (
    SFUNC = int8pl,
    STYPE = bigint,
    COMBINEFUNC = int8pl,
    PARALLEL = SAFE
);
