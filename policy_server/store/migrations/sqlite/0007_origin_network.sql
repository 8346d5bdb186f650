-- The admin's known-network category an origin was in when it was learned ('mail-app',
-- 'hosting', ...; NULL outside known networks and for origins learned before this column): a
-- history of only such origins, or of unplaceable ones, gives no reference for the owner's own.
ALTER TABLE origins ADD COLUMN network TEXT;
