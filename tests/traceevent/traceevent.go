// Package traceevent checks trace-event files (what hvprobe's
// --format perfetto writes) against a JSON Schema of the Trace Event
// Format, with a JSON Schema validator (santhosh-tekuri/jsonschema)
// independent of the code that writes them.
package traceevent

import (
	"bytes"
	_ "embed"
	"fmt"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed trace-event.schema.json
var schemaJSON []byte

const schemaURL = "https://hvprobe.invalid/trace-event.schema.json"

var compiled = sync.OnceValues(func() (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schemaJSON))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(schemaURL, doc); err != nil {
		return nil, err
	}
	return c.Compile(schemaURL)
})

// Validate reports whether file is a trace-event JSON array the schema
// accepts; the error names each record and rule at fault.
func Validate(file []byte) error {
	sch, err := compiled()
	if err != nil {
		return fmt.Errorf("trace-event schema: %w", err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(file))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return sch.Validate(doc)
}
