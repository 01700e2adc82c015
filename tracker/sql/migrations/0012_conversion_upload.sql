-- Corrections uploaded as CSV (`POST /api/conversions/upload`): each row is applied like an
-- authenticated postback and marked as coming from an upload.
ALTER TABLE conversions DROP CONSTRAINT conversions_source_check,
    ADD CONSTRAINT conversions_source_check CHECK (source IN ('postback', 'pixel', 'upload'));
ALTER TABLE postback_log DROP CONSTRAINT postback_log_source_check,
    ADD CONSTRAINT postback_log_source_check CHECK (source IN ('postback', 'pixel', 'upload'));
