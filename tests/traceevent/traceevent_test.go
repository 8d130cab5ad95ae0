package traceevent

import (
	"strings"
	"testing"
)

// The schema accepts the format's own examples and refuses records that
// break its rules, so a pass means something.
func TestSchema(t *testing.T) {
	good := `[
{"name":"f","cat":"kprobes","ph":"X","ts":10.5,"dur":2,"pid":1,"tid":0,"args":{"x":1}},
{"name":"g","ph":"i","ts":11,"s":"t","pid":2,"tid":7},
{"name":"process_name","ph":"M","pid":1,"tid":0,"args":{"name":"guest vCPUs"}},
{"name":"thread_sort_index","ph":"M","pid":1,"tid":3,"args":{"sort_index":-1}}
]`
	if err := Validate([]byte(good)); err != nil {
		t.Fatalf("good file refused: %v", err)
	}
	bad := map[string]string{
		"no pid":           `[{"name":"f","ph":"i","s":"t","ts":1,"tid":0}]`,
		"slice no dur":     `[{"name":"f","ph":"X","ts":1,"pid":1,"tid":0}]`,
		"negative dur":     `[{"name":"f","ph":"X","ts":1,"dur":-1,"pid":1,"tid":0}]`,
		"instant no scope": `[{"name":"f","ph":"i","ts":1,"pid":1,"tid":0}]`,
		"bad scope":        `[{"name":"f","ph":"i","s":"x","ts":1,"pid":1,"tid":0}]`,
		"no ts":            `[{"name":"f","ph":"i","s":"t","pid":1,"tid":0}]`,
		"unknown phase":    `[{"name":"f","ph":"Q","ts":1,"pid":1,"tid":0}]`,
		"empty name":       `[{"name":"","ph":"i","s":"t","ts":1,"pid":1,"tid":0}]`,
		"string pid":       `[{"name":"f","ph":"i","s":"t","ts":1,"pid":"1","tid":0}]`,
		"meta no args":     `[{"name":"thread_name","ph":"M","pid":1,"tid":0}]`,
		"meta no name arg": `[{"name":"thread_name","ph":"M","pid":1,"tid":0,"args":{}}]`,
		"meta unknown":     `[{"name":"thread_colour","ph":"M","pid":1,"tid":0,"args":{"name":"x"}}]`,
		"dur on instant":   `[{"name":"f","ph":"i","s":"t","ts":1,"dur":1,"pid":1,"tid":0}]`,
		"not an array":     `{"traceEvents":[]}`,
		"truncated":        `[{"name":"f","ph":"i","s":"t","ts":1,"pid":1,"tid":0},`,
	}
	for what, file := range bad {
		if err := Validate([]byte(file)); err == nil {
			t.Errorf("%s: accepted %s", what, strings.TrimSpace(file))
		}
	}
}
