package guest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// benchMap is Debian's System.map when the image tooling fetched it, else
// a synthesized 90k-line map of the same shape.
func benchMap(b *testing.B) []byte {
	b.Helper()
	if data, err := os.ReadFile(filepath.Join("..", ".cache", "images", "stock", "System.map")); err == nil {
		b.Logf("using the stock System.map (%d bytes)", len(data))
		return data
	}
	var buf bytes.Buffer
	buf.WriteString("0000000000000000 D __per_cpu_start\n0000000000030000 D __per_cpu_end\n")
	addr := uint64(0xffffffff81000000)
	types := "TtTtTtDdBR"
	for i := range 90000 {
		fmt.Fprintf(&buf, "%016x %c sym_%d_%s\n", addr, types[i%len(types)], i, strings.Repeat("x", i%17))
		addr += uint64(16 + i%400)
	}
	return buf.Bytes()
}

func BenchmarkParseSystemMap(b *testing.B) {
	data := benchMap(b)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ParseSystemMap(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}

func benchTable(b *testing.B) (*SymbolTable, []uint64) {
	tab, err := ParseSystemMap(bytes.NewReader(benchMap(b)))
	if err != nil {
		b.Fatal(err)
	}
	var addrs []uint64
	for s := range tab.All() {
		if s.IsText() && s.Size > 0 {
			addrs = append(addrs, s.Addr+s.Size/2)
		}
	}
	return tab, addrs
}

func BenchmarkSymbolAt(b *testing.B) {
	tab, addrs := benchTable(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, _, ok := tab.SymbolAt(addrs[i%len(addrs)]); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

func BenchmarkLookup(b *testing.B) {
	tab, _ := benchTable(b)
	var names []string
	for s := range tab.All() {
		if _, err := tab.Lookup(s.Name); err == nil {
			names = append(names, s.Name)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := tab.Lookup(names[i%len(names)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkUnknownSymbol(b *testing.B) {
	tab, _ := benchTable(b)
	for b.Loop() {
		if _, err := tab.Lookup("do_sys_opnat2"); !errors.Is(err, ErrUnknownSymbol) {
			b.Fatal(err)
		}
	}
}
