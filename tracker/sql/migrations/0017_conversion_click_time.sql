-- Rows that refer to a conversion by id carry its `click_time` too: `conversions` is
-- partitioned by it (0015), one partition per month for ever, and a lookup by id alone
-- probes the id index of every month. With the time beside the id, a join or lookup
-- pins the conversion's one partition (at run time, per row, for a join).
--
-- The backfill runs in this migration's transaction, which holds `conversion_history`
-- and `deliveries` locked until it commits (one pass over each, joined to
-- `conversions`): run `tracker migrate` at a quiet hour. Postbacks meanwhile wait, and
-- after TRACKER_PG_TIMEOUT are queued in Redis as in any database outage.
ALTER TABLE conversion_history ADD COLUMN conversion_click_time timestamptz;
ALTER TABLE deliveries ADD COLUMN conversion_click_time timestamptz;

UPDATE conversion_history h SET conversion_click_time = c.click_time
FROM conversions c WHERE c.id = h.conversion_id;
UPDATE deliveries d SET conversion_click_time = c.click_time
FROM conversions c WHERE c.id = d.conversion_id;
-- A row whose conversion is gone (the tracker deletes none; an operator might have)
-- found nothing before and finds nothing now: '-infinity' is in no partition.
UPDATE conversion_history SET conversion_click_time = '-infinity'
WHERE conversion_click_time IS NULL;
UPDATE deliveries SET conversion_click_time = '-infinity'
WHERE conversion_click_time IS NULL;

-- Every writer sets it. A process still running the code from before this migration
-- (until it is restarted) writes history rows without it: those are filled from the
-- conversion, found by id in every partition, as before. The WHEN clause is checked
-- without calling the function, so rows that carry the time pay nothing for it.
CREATE FUNCTION fill_conversion_click_time() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT click_time INTO NEW.conversion_click_time
    FROM conversions WHERE id = NEW.conversion_id;
    RETURN NEW;
END
$$;
CREATE TRIGGER conversion_history_click_time
    BEFORE INSERT ON conversion_history
    FOR EACH ROW WHEN (NEW.conversion_click_time IS NULL)
    EXECUTE FUNCTION fill_conversion_click_time();

ALTER TABLE conversion_history ALTER COLUMN conversion_click_time SET NOT NULL;
ALTER TABLE deliveries ALTER COLUMN conversion_click_time SET NOT NULL;

-- As in 0010, but each conversion is found in its click's month only.
CREATE OR REPLACE FUNCTION enqueue_deliveries() RETURNS trigger
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM traffic_sources
        WHERE postback_url IS NOT NULL OR postback_preset <> 'template'
    ) AND NOT EXISTS (SELECT 1 FROM campaigns WHERE postback_url IS NOT NULL) THEN
        RETURN NULL;  -- no source is sent anything
    END IF;
    INSERT INTO deliveries (
        conversion_id, conversion_click_time, history_id, traffic_source_id, campaign_id,
        status, payout, currency
    )
    SELECT h.conversion_id, h.conversion_click_time, h.id, c.traffic_source_id,
           c.campaign_id, e.status,
           -- A chargeback takes back what partial refunds have not taken back already.
           CASE WHEN h.refund > 0 THEN -h.refund
                WHEN e.status = 'chargeback' THEN -greatest(abs(h.payout) - c.refunded, 0)
                ELSE h.payout END,
           c.currency
    FROM added h
    -- Each row's conversion from its month's partition alone; the fence (OFFSET 0)
    -- keeps it a lookup per row however many rows the statement added (as a join it
    -- may read every month's partition to hash them).
    CROSS JOIN LATERAL (
        SELECT * FROM conversions
        WHERE id = h.conversion_id AND click_time = h.conversion_click_time
        OFFSET 0
    ) c
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
