-- Lifeboat control-plane schema, version 9: tags on source servers, as instances have
-- them, by which recovery plans select servers (lifeboat source-servers tag). A JSON
-- object of strings written by encoding/json (keys sorted, no spaces), so that a tag
-- is found as the text "key":"value" in it (db/sources.go, tagPattern).
ALTER TABLE source_servers ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
