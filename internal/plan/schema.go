package plan

import (
	_ "embed" // the schema
	"slices"
)

//go:embed plan.schema.json
var schemaJSON []byte

// Schema is the JSON Schema (draft 2020-12) of the plan file, for editors and for
// checks before a plan reaches the control plane. docs/plan.schema.json is a copy of
// it. Validate checks more than a schema can say (server ids in one wave, wave order
// without cycles, records in their zone, drills apart from production).
func Schema() []byte { return slices.Clone(schemaJSON) }
