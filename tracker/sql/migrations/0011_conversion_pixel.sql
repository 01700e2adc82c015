-- The conversion pixel (`/px.gif`, `/px.js`) for advertisers who cannot send postbacks.

-- A pixel cannot carry a secret: each network opts in.
ALTER TABLE affiliate_networks ADD COLUMN allow_pixel boolean NOT NULL DEFAULT false;

-- Whether the postback or the pixel created the conversion; a postback log row says
-- which of the two was received.
ALTER TABLE conversions
    ADD COLUMN source text NOT NULL DEFAULT 'postback' CHECK (source IN ('postback', 'pixel'));
ALTER TABLE postback_log
    ADD COLUMN source text NOT NULL DEFAULT 'postback' CHECK (source IN ('postback', 'pixel'));
