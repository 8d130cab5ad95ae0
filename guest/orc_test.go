package guest

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/kimage"
)

func TestORCDecodeLayouts(t *testing.T) {
	raw := func(sp, bp int16, bits uint16) []byte {
		b := make([]byte, 6)
		binary.LittleEndian.PutUint16(b, uint16(sp))
		binary.LittleEndian.PutUint16(b[2:], uint16(bp))
		binary.LittleEndian.PutUint16(b[4:], bits)
		return b
	}
	for _, tc := range []struct {
		name string
		l    orcLayout
		b    []byte
		want ORCEntry
	}{
		{"6.1 call sp+8", orcLayout61, raw(8, 0, 5), ORCEntry{SPOffset: 8, SPReg: ORCRegSP, Type: ORCCall}},
		{"6.1 call bp+16 bp saved at cfa-16", orcLayout61, raw(16, -16, 4|1<<4),
			ORCEntry{SPOffset: 16, BPOffset: -16, SPReg: ORCRegBP, BPReg: ORCRegPrevSP, Type: ORCCall}},
		{"6.1 regs", orcLayout61, raw(0, 0, 5|1<<8), ORCEntry{SPReg: ORCRegSP, Type: ORCRegs, Signal: true}},
		{"6.1 partial", orcLayout61, raw(0, 0, 5|2<<8), ORCEntry{SPReg: ORCRegSP, Type: ORCRegsPartial, Signal: true}},
		{"6.1 end", orcLayout61, raw(0, 0, 1<<10), ORCEntry{Type: ORCEndOfStack}},
		{"6.1 undefined", orcLayout61, raw(0, 0, 0), ORCEntry{Type: ORCUndefined}},
		{"6.3 end", orcLayout63, raw(0, 0, 1<<11), ORCEntry{Type: ORCEndOfStack}},
		{"6.3 signal call", orcLayout63, raw(8, 0, 5|1<<10), ORCEntry{SPOffset: 8, SPReg: ORCRegSP, Type: ORCCall, Signal: true}},
		{"6.4 call", orcLayout64, raw(8, 0, 5|2<<8), ORCEntry{SPOffset: 8, SPReg: ORCRegSP, Type: ORCCall}},
		{"6.4 end", orcLayout64, raw(0, 0, 1<<8), ORCEntry{Type: ORCEndOfStack}},
		{"6.4 partial signal", orcLayout64, raw(0, 0, 5|4<<8|1<<11),
			ORCEntry{SPReg: ORCRegSP, Type: ORCRegsPartial, Signal: true}},
	} {
		if got := tc.l.decode(tc.b); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestORCParseAndLookup(t *testing.T) {
	// Three entries at 0x1000, 0x1010, 0x1020 stored relative to a table
	// at 0x5000.
	const base = 0x5000
	ips := make([]byte, 12)
	for i, ip := range []uint64{0x1000, 0x1010, 0x1020} {
		binary.LittleEndian.PutUint32(ips[4*i:], uint32(int32(int64(ip)-int64(base+4*i))))
	}
	ents := make([]byte, 18)
	for i, sp := range []int16{8, 16, 0} {
		binary.LittleEndian.PutUint16(ents[6*i:], uint16(sp))
		if sp != 0 {
			binary.LittleEndian.PutUint16(ents[6*i+4:], uint16(ORCRegSP))
		}
	}
	o, err := parseORC(base, ips, ents, orcLayout61)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ip uint64
		sp int16
		ok bool
	}{{0xfff, 0, false}, {0x1000, 8, true}, {0x100f, 8, true}, {0x1010, 16, true}, {0x9999, 0, true}} {
		e, ok := o.Lookup(tc.ip)
		if ok != tc.ok || e.SPOffset != tc.sp {
			t.Errorf("Lookup(%#x) = %+v, %v", tc.ip, e, ok)
		}
	}
	if e, ok := o.Slid(0x200000).Lookup(0x201010); !ok || e.SPOffset != 16 {
		t.Errorf("slid lookup = %+v, %v", e, ok)
	}
	if _, err := parseORC(base, ips, ents[:12], orcLayout61); !errors.Is(err, ErrPatchTable) {
		t.Errorf("count mismatch: %v", err)
	}
	rel := func(i int, ip int64) { binary.LittleEndian.PutUint32(ips[4*i:], uint32(int32(ip-base-4*int64(i)))) }
	rel(2, 0x1008) // below entry 1's 0x1010
	if _, err := parseORC(base, ips, ents, orcLayout61); !errors.Is(err, ErrPatchTable) {
		t.Errorf("unsorted: %v", err)
	}
}

func TestORCNoTables(t *testing.T) {
	if _, err := ReadORC(&kimage.Image{}); !errors.Is(err, ErrNoORC) {
		t.Errorf("got %v, want ErrNoORC", err)
	}
}

func TestReleaseNumbers(t *testing.T) {
	for v, want := range map[string][2]int{"6.1.0-28-cloud-amd64": {6, 1}, "6.10.3": {6, 10}, "6.4-rc1": {6, 4}} {
		if ma, mi, ok := releaseNumbers(v); !ok || ma != want[0] || mi != want[1] {
			t.Errorf("%q: %d.%d %v", v, ma, mi, ok)
		}
	}
	if _, _, ok := releaseNumbers("weird"); ok {
		t.Error("weird parsed")
	}
}

// TestRealStockKernelORC checks the stock 6.1 kernel's table against what
// objtool guarantees: sorted, every C function starts with CFA = sp+8 (only
// the return address on the stack), and entry code carries regs or end
// hints.
func TestRealStockKernelORC(t *testing.T) {
	image, smap := realFiles(t, "stock/vmlinuz", "stock/System.map")
	k, err := OpenKernel(image, smap)
	if err != nil {
		t.Fatal(err)
	}
	o, err := k.ORC()
	if err != nil {
		t.Fatal(err)
	}
	if o.Layout != "6.1" {
		t.Errorf("layout %s for %s", o.Layout, k.Image.Version)
	}
	prev := uint64(0)
	for i := 0; i < o.Len(); i++ {
		a, _ := o.At(i)
		if a < prev {
			t.Fatalf("entry %d at %#x is below the one before, %#x", i, a, prev)
		}
		prev = a
	}
	sym := func(name string) uint64 {
		s, err := k.Symbols.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		return s.Addr
	}
	stext, etext := sym("_stext"), sym("_etext")
	entryLo, entryHi := sym("__entry_text_start"), sym("__entry_text_end")
	checked, bad := 0, 0
	for i, s := range k.Symbols.syms {
		// Every 50th function in .text. Not C function entries: entry
		// text and the asm below (their own unwind hints), .cold parts
		// (continuations inside a frame).
		if i%50 != 0 || (s.Type != 'T' && s.Type != 't') || s.Addr < stext || s.Addr >= etext ||
			(s.Addr >= entryLo && s.Addr < entryHi) || strings.HasSuffix(s.Name, ".cold") || asmSyms[s.Name] {
			continue
		}
		checked++
		e, ok := o.Lookup(s.Addr)
		if !ok || e.SPReg != ORCRegSP || e.SPOffset != 8 || e.Type != ORCCall {
			bad++
			t.Logf("%s %#x: %+v %v", s.Name, s.Addr, e, ok)
		}
	}
	t.Logf("%d entries; %d function starts checked, %d without sp+8 call", o.Len(), checked, bad)
	if checked < 500 || bad > 0 {
		t.Errorf("%d of %d function starts lack CFA=sp+8", bad, checked)
	}
	for _, tc := range []struct {
		name string
		off  uint64
		want ORCType
	}{
		{"entry_SYSCALL_64", 0, ORCEndOfStack},
		{"asm_exc_int3", 0, ORCRegsPartial},
		{"error_entry", 0, ORCCall},
		{"ret_from_fork", 0, ORCEndOfStack},
	} {
		e, ok := o.Lookup(sym(tc.name) + tc.off)
		if !ok || e.Type != tc.want {
			t.Errorf("%s+%#x: %+v (%v), want type %s", tc.name, tc.off, e, ok, tc.want)
		}
	}
	// Once pt_regs are pushed, entry code says so (within its first
	// 0x100 bytes; local labels split it into short symbols).
	for _, name := range []string{"entry_SYSCALL_64", "ret_from_fork"} {
		start := sym(name)
		found := false
		for i := 0; i < o.Len(); i++ {
			if a, e := o.At(i); a >= start && a < start+0x100 && e.Type == ORCRegs {
				found = true
			}
		}
		if !found {
			t.Errorf("%s has no regs entry", name)
		}
	}
}

// asmSyms are .text symbols that are not C function entries: the
// retpoline thunks and Xen's syscall entry start with an end-of-stack
// hint, __thunk_restore is a label inside a thunk's frame, and
// __lock_text_start marks a section.
var asmSyms = map[string]bool{
	"__thunk_restore": true, "xen_entry_SYSCALL_64": true,
	"__lock_text_start": true, "__x86_indirect_thunk_r15": true,
}
