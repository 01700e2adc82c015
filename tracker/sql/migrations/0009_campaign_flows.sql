-- Campaign flows: landers, rules, bot handling, unique visitors, more cost models,
-- and the visitor facts stored with every click and copied onto its conversions.

CREATE TABLE landers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    url text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);

-- The landers of a campaign's default path (its offers are in campaign_offers).
CREATE TABLE campaign_landers (
    campaign_id bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    lander_id bigint NOT NULL REFERENCES landers (id),
    weight integer NOT NULL CHECK (weight >= 0),
    position integer NOT NULL,
    PRIMARY KEY (campaign_id, lander_id)
);

ALTER TABLE campaigns
    DROP CONSTRAINT campaigns_cost_model_check,
    ADD CONSTRAINT campaigns_cost_model_check
        CHECK (cost_model IN ('none', 'cpc', 'auto', 'cpm', 'cpa', 'revshare')),
    -- Ordered rules, validated by the API: [{name, conditions, offers, landers}].
    ADD COLUMN rules jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN bot_action text NOT NULL DEFAULT 'offer'
        CHECK (bot_action IN ('offer', 'url', '404')),
    ADD COLUMN bot_url text,
    ADD COLUMN unique_window_hours integer NOT NULL DEFAULT 24
        CHECK (unique_window_hours BETWEEN 1 AND 8760),
    ADD COLUMN timezone text NOT NULL DEFAULT 'UTC';

ALTER TABLE clicks
    ADD COLUMN country text,
    ADD COLUMN region text,
    ADD COLUMN city text,
    ADD COLUMN asn bigint,
    ADD COLUMN isp text,
    ADD COLUMN device text,
    ADD COLUMN os text,
    ADD COLUMN os_version text,
    ADD COLUMN browser text,
    ADD COLUMN browser_version text,
    ADD COLUMN language text,
    ADD COLUMN is_bot boolean NOT NULL DEFAULT false,
    ADD COLUMN bot_reason text,
    -- NULL when it could not be decided (the click was spooled while Redis was down).
    ADD COLUMN is_unique boolean,
    ADD COLUMN lander_id bigint,
    -- When the visitor went on from the lander to the offer (the first time).
    ADD COLUMN lp_clicked_at timestamptz;

ALTER TABLE conversions
    ADD COLUMN country text,
    ADD COLUMN region text,
    ADD COLUMN city text,
    ADD COLUMN asn bigint,
    ADD COLUMN isp text,
    ADD COLUMN device text,
    ADD COLUMN os text,
    ADD COLUMN os_version text,
    ADD COLUMN browser text,
    ADD COLUMN browser_version text,
    ADD COLUMN language text,
    ADD COLUMN is_bot boolean NOT NULL DEFAULT false,
    ADD COLUMN is_unique boolean,
    ADD COLUMN lander_id bigint;

-- `clicks` counts human clicks only; bots are counted apart. Cost covers every click.
ALTER TABLE click_rollups
    ADD COLUMN bot_clicks bigint NOT NULL DEFAULT 0,
    ADD COLUMN unique_clicks bigint NOT NULL DEFAULT 0,
    ADD COLUMN lp_views bigint NOT NULL DEFAULT 0,
    ADD COLUMN lp_clicks bigint NOT NULL DEFAULT 0;

-- Costs set for a slice of a campaign's clicks after the fact (POST /api/costs).
CREATE TABLE cost_updates (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id bigint NOT NULL REFERENCES campaigns (id),
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    filter jsonb NOT NULL DEFAULT '{}',
    cost numeric(20, 6) NOT NULL,
    clicks bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
