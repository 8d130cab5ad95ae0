package session

import (
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/kprobes/probedef"
)

// TestFastArgs: what a record (the registers at the hit) can answer goes
// exit-less; what needs guest memory as the hit saw it does not.
func TestFastArgs(t *testing.T) {
	for line, want := range map[string]string{
		`p:a f`:                             "",
		`p:a f x=%di:s64 y=%si sp=$stack`:   "",
		`p:a f x=$arg2 c=$comm i=\7 s=\"k"`: "",
		`p:a f m=+8(%di):u32`:               "m reads guest memory",
		`p:a f s=+0(+8(%di)):string`:        "s reads guest memory",
		`p:a f st=$stack2`:                  "st reads guest memory",
		`p:a f g=@jiffies`:                  "g reads guest memory",
	} {
		d, err := probedef.Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		if got := fastArgs(d); (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q", line, got, want)
		}
	}
	d, _ := probedef.Parse(`p:a f`)
	d.Stack = true
	if fastArgs(d) == "" {
		t.Error("a stack trace went exit-less")
	}
}
