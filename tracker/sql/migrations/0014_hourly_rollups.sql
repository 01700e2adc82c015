-- Per-hour click counters and cost by campaign, offer, source and lander, written with the
-- clicks (and moved by lander click-throughs and cost updates) like the daily ones: they
-- answer reports by hour, day, week or month in any time zone whose offset is whole hours.
CREATE TABLE click_hourly (
    hour timestamptz NOT NULL,
    campaign_id bigint NOT NULL,
    offer_id bigint NOT NULL,
    traffic_source_id bigint NOT NULL,
    lander_id bigint NOT NULL DEFAULT 0,  -- 0: no lander
    clicks bigint NOT NULL DEFAULT 0,
    bot_clicks bigint NOT NULL DEFAULT 0,
    unique_clicks bigint NOT NULL DEFAULT 0,
    lp_views bigint NOT NULL DEFAULT 0,
    lp_clicks bigint NOT NULL DEFAULT 0,
    cost numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, campaign_id, offer_id, traffic_source_id, lander_id)
);

INSERT INTO click_hourly (
    hour, campaign_id, offer_id, traffic_source_id, lander_id,
    clicks, bot_clicks, unique_clicks, lp_views, lp_clicks, cost
)
SELECT date_trunc('hour', created_at, 'UTC'), campaign_id, offer_id, traffic_source_id,
       coalesce(lander_id, 0),
       count(*) FILTER (WHERE NOT is_bot),
       count(*) FILTER (WHERE is_bot),
       count(*) FILTER (WHERE coalesce(is_unique, false) AND NOT is_bot),
       count(*) FILTER (WHERE lander_id IS NOT NULL AND NOT is_bot),
       count(*) FILTER (WHERE lp_clicked_at IS NOT NULL AND NOT is_bot),
       coalesce(sum(cost), 0)
FROM clicks
GROUP BY 1, 2, 3, 4, 5;
