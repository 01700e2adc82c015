-- A traffic source's cap on the per-click cost its clicks may report (cost_model 'auto').
-- Costs above it, and negative ones, are stored as no cost; the click itself is kept.
ALTER TABLE traffic_sources
    ADD COLUMN max_click_cost numeric(18, 6) NOT NULL DEFAULT 100
        CHECK (max_click_cost >= 0);

-- Sums of many clicks must never overflow, or a whole batch of honest clicks is refused.
ALTER TABLE click_rollups ALTER COLUMN cost TYPE numeric;
