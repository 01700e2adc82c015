-- Reports read clicks by time without a campaign, and date conversions by their click.
CREATE INDEX clicks_time ON clicks (created_at);
CREATE INDEX conversions_click_time ON conversions (click_time);
