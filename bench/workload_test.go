package bench

import "testing"

func TestParseReport(t *testing.T) {
	r, ok := ParseReport(`HVWL: str n=20 last="hvwl-str-19"`)
	if !ok || r.What != "str" || r.Fields["n"] != "20" || r.Fields["last"] != "hvwl-str-19" {
		t.Fatalf("got %+v %v", r, ok)
	}
	if n, err := r.Int("n"); n != 20 || err != nil {
		t.Fatalf("Int(n) = %d, %v", n, err)
	}
	if _, err := r.Int("missing"); err == nil {
		t.Fatal("missing field gave no error")
	}
	if _, ok := ParseReport("[    1.0] random"); ok {
		t.Fatal("non-workload line parsed")
	}
	if _, err := FindReport([]string{"HVWL: begin calls:3", "HVWL: calls n=3 sum=3009"}, "calls"); err != nil {
		t.Fatal(err)
	}
	if _, err := FindReport([]string{"HVWL: begin calls:3"}, "calls"); err == nil {
		t.Fatal("absent report found")
	}
}
