-- Time partitioning: `clicks` and `postback_log` by UTC day, `conversions` by the UTC
-- month of their click. Raw clicks and log rows are then dropped by whole partitions
-- (`tracker maintain`, and the sink every TRACKER_MAINTAIN_SECONDS); conversions are
-- kept forever, so theirs are monthly. Partitions are created ahead, and by a writer
-- that meets a row with none (see tracker/store/partitions.py).
--
-- Every unique index must include the partition key, so:
-- * clicks: primary key (click_id, created_at). `created_at` is the time in the click
--   id (`click_id_time` below), so a click is still one per id, and a lookup by id
--   pins its partition with `created_at = click_id_time(id)`.
-- * conversions: primary key (id, click_time), unique (click_id, dedupe_key, click_time);
--   `click_time` is the click's, fixed by the click id, so the second is as unique as
--   before. `conversion_history.conversion_id` and `deliveries.conversion_id` can no
--   longer reference conversions (id): those two foreign keys are dropped. The tracker
--   never deletes a conversion, so they guarded nothing it does.
-- * postback_log: primary key (id, received_at), unique (receipt_id, received_at); a
--   postback applied again (queued during an outage) keeps its received_at, so the
--   receipt still dedupes.
--
-- Existing rows are copied into the new tables in this migration's transaction, which
-- holds the three tables locked until it commits: run it with the sink stopped (clicks
-- wait on the Redis stream) at a quiet hour; postbacks meanwhile wait, and after
-- TRACKER_PG_TIMEOUT are queued in Redis as in any Postgres outage.

-- The millisecond time in a click id (see tracker/domain/clickid.py): the first ten
-- base32hex characters hold 50 bits, the 48-bit time and two random bits. NULL for
-- a text that is not a click id. Inlined by the planner (one SQL expression). Each
-- shift is in parentheses: `<<`, `|` and `>>` share one precedence in Postgres.
-- to_timestamp takes a double: exact to the microsecond until about the year 2240.
CREATE FUNCTION click_id_time(click_id text) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN click_id ~ '^[0-9a-v]{29}$' THEN to_timestamp(((
      ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 1, 1)) - 1)::bigint << 45)
    | ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 2, 1)) - 1)::bigint << 40)
    | ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 3, 1)) - 1)::bigint << 35)
    | ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 4, 1)) - 1)::bigint << 30)
    | ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 5, 1)) - 1)::bigint << 25)
    | ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 6, 1)) - 1)::bigint << 20)
    | ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 7, 1)) - 1)::bigint << 15)
    | ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 8, 1)) - 1)::bigint << 10)
    | ((strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 9, 1)) - 1)::bigint << 5)
    | (strpos('0123456789abcdefghijklmnopqrstuv', substr(click_id, 10, 1)) - 1)::bigint
  ) >> 2) / 1000.0) END
$$;

-- A click's created_at: the time in its id; a record whose id is not a click id (none
-- the click path makes) keeps the time it carries.
CREATE FUNCTION click_created_at(click_id text, created_ms bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT coalesce(click_id_time(click_id), to_timestamp(created_ms / 1000.0))
$$;

-- Creates the partition of `parent` for the UTC day or month (`grain`) holding `moment`,
-- named `<prefix>_pYYYYMMDD` or `<prefix>_pYYYYMM` (prefix: the parent's name); returns
-- its name, or NULL when it exists already. Serialised by a transaction-level advisory
-- lock, so writers meeting the same missing partition do not fail on each other.
CREATE FUNCTION create_time_partition(
    parent text, grain text, moment timestamptz, prefix text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    start timestamptz := date_trunc(grain, moment, 'UTC');
    stop timestamptz := date_trunc(grain, start + CASE grain WHEN 'day' THEN interval '36 hours'
                                                             ELSE interval '40 days' END, 'UTC');
    name text := coalesce(prefix, parent) || '_p'
        || to_char(start AT TIME ZONE 'UTC', CASE grain WHEN 'day' THEN 'YYYYMMDD' ELSE 'YYYYMM' END);
BEGIN
    IF grain NOT IN ('day', 'month') THEN
        RAISE EXCEPTION 'partition grain must be day or month, not %', grain;
    END IF;
    IF to_regclass(name) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(7240612);
    -- Whoever held the lock may have just created it (committed while we waited); a
    -- day inside a month of history (below) has the month's partition (an overlap).
    BEGIN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       name, parent, start, stop);
    EXCEPTION WHEN duplicate_table OR invalid_object_definition THEN
        RETURN NULL;
    END;
    RETURN name;
END
$$;

-- The grain of the partition for rows at `moment`: months before the current UTC month
-- hold history (clicks were kept for ever until now), one partition per month; a
-- partition per day of years of history would be thousands of tables created in this
-- one transaction, more locks than Postgres holds by default ("out of shared memory").
-- Retention drops such a month once all of it is past. From this month on, days.
CREATE FUNCTION pg_temp.history_grain(moment timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
SELECT CASE WHEN moment < date_trunc('month', now(), 'UTC') THEN 'month' ELSE 'day' END
$$;
-- The days made ahead, from yesterday on but not before this month.
CREATE FUNCTION pg_temp.days_ahead() RETURNS SETOF timestamptz
LANGUAGE sql STABLE AS $$
SELECT generate_series(greatest(now() - interval '1 day', date_trunc('month', now(), 'UTC')),
                       now() + interval '7 days', interval '1 day')
$$;

-- clicks --------------------------------------------------------------------------------
CREATE TABLE clicks_partitioned (
    LIKE clicks INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS
) PARTITION BY RANGE (created_at);
SELECT create_time_partition('clicks_partitioned', grain, moment, 'clicks')
FROM (
    SELECT DISTINCT pg_temp.history_grain(created_at) AS grain,
           date_trunc(pg_temp.history_grain(created_at), created_at, 'UTC') AS moment
    FROM clicks
    UNION
    SELECT 'day', pg_temp.days_ahead()
) AS periods;
INSERT INTO clicks_partitioned SELECT * FROM clicks;
DROP TABLE clicks;
ALTER TABLE clicks_partitioned RENAME TO clicks;
ALTER TABLE clicks ADD CONSTRAINT clicks_pkey PRIMARY KEY (click_id, created_at);
CREATE INDEX clicks_campaign_time ON clicks (campaign_id, created_at);
CREATE INDEX clicks_time ON clicks (created_at);

-- postback_log --------------------------------------------------------------------------
CREATE TABLE postback_log_partitioned (
    LIKE postback_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY
        INCLUDING STORAGE INCLUDING COMMENTS
) PARTITION BY RANGE (received_at);
SELECT create_time_partition('postback_log_partitioned', grain, moment, 'postback_log')
FROM (
    SELECT DISTINCT pg_temp.history_grain(received_at) AS grain,
           date_trunc(pg_temp.history_grain(received_at), received_at, 'UTC') AS moment
    FROM postback_log
    UNION
    SELECT 'day', pg_temp.days_ahead()
) AS periods;
INSERT INTO postback_log_partitioned OVERRIDING SYSTEM VALUE SELECT * FROM postback_log;
-- The new identity sequence goes on from where the old one was.
SELECT setval('postback_log_partitioned_id_seq', last_value, is_called)
FROM postback_log_id_seq;
DROP TABLE postback_log;
ALTER TABLE postback_log_partitioned RENAME TO postback_log;
ALTER SEQUENCE postback_log_partitioned_id_seq RENAME TO postback_log_id_seq;
ALTER TABLE postback_log ADD CONSTRAINT postback_log_pkey PRIMARY KEY (id, received_at);
CREATE INDEX postback_log_time ON postback_log (received_at);
CREATE INDEX postback_log_unmatched ON postback_log (click_id) WHERE result = 'unmatched';
CREATE UNIQUE INDEX postback_log_receipt ON postback_log (receipt_id, received_at);
CREATE INDEX postback_log_unmatched_time ON postback_log (received_at) WHERE result = 'unmatched';

-- conversions ---------------------------------------------------------------------------
ALTER TABLE conversion_history DROP CONSTRAINT conversion_history_conversion_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_conversion_id_fkey;
CREATE TABLE conversions_partitioned (
    LIKE conversions INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY
        INCLUDING STORAGE INCLUDING COMMENTS
) PARTITION BY RANGE (click_time);
SELECT create_time_partition('conversions_partitioned', 'month', month, 'conversions')
FROM (
    SELECT DISTINCT date_trunc('month', click_time, 'UTC') AS month FROM conversions
    UNION
    SELECT generate_series(now() - interval '1 month', now() + interval '2 months',
                           interval '1 month')
) AS months;
INSERT INTO conversions_partitioned OVERRIDING SYSTEM VALUE SELECT * FROM conversions;
SELECT setval('conversions_partitioned_id_seq', last_value, is_called)
FROM conversions_id_seq;
DROP TABLE conversions;
ALTER TABLE conversions_partitioned RENAME TO conversions;
ALTER SEQUENCE conversions_partitioned_id_seq RENAME TO conversions_id_seq;
ALTER TABLE conversions
    ADD CONSTRAINT conversions_pkey PRIMARY KEY (id, click_time),
    ADD CONSTRAINT conversions_click_dedupe UNIQUE (click_id, dedupe_key, click_time);
CREATE INDEX conversions_time ON conversions (created_at);
CREATE INDEX conversions_campaign_time ON conversions (campaign_id, created_at);
CREATE INDEX conversions_click_txid ON conversions (click_id, txid);
CREATE INDEX conversions_unconverted ON conversions (original_currency) WHERE payout IS NULL;
CREATE INDEX conversions_click_time ON conversions (click_time);
