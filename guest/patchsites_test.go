package guest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hvprobe/hvprobe/kimage"
)

// The synthesized kernel for the patch-site tests: one PT_LOAD over
// [psBase, psBase+psSpan) with text at psBase, init and exit text, data
// (keys, and a __jump_table found only through the map) at psData, and
// one slot per section-held table from psTables.
const (
	psBase   = 0xffffffff81000000
	psSpan   = 0x3000
	psInit   = psBase + 0x800
	psExit   = psBase + 0x900
	psData   = psBase + 0x1000
	psJump   = psData + 0x100 // __start___jump_table
	psTables = psBase + 0x2000
	psSlot   = 0x100
)

// Text offsets of the instructions the tables point at.
const (
	psMcountCall = 0x00 // e8 rel32 (fn_a's first instruction)
	psJumpNop2   = 0x05 // 66 90
	psJumpNop5   = 0x07 // 0f 1f 44 00 00
	psReturnJmp  = 0x0c // e9 rel32
	psReturnJcc  = 0x11 // 0f 85 rel32
	psLock       = 0x17 // f0 48 ff 07: lock incq (%rdi)
	psEndbr      = 0x1b // f3 0f 1e fa
	psParavirt   = 0x1f // ff 15 rel32: call *pv_ops(%rip)
	psRetpoline  = 0x25 // e8 rel32
	psStatic     = 0x2a // e8 rel32
	psAlt        = 0x2f // 90 90 90
	psUaccess    = 0x32 // 48 8b 07: mov (%rdi), %rax
	psJumpJmp8   = 0x35 // eb 00
	psMcountNop  = 0x40 // 0f 1f 44 00 00 (fn_b's first instruction)
	psTrampSig   = 0x100
	psTrampBare  = 0x108
	psBadInsn    = 0x1f8 // d6: no instruction in 64-bit mode
)

// Data offsets of the keys.
const (
	psKeyPlain  = 0x00  // plain_key
	psKeyTP     = 0x10  // __tracepoint_foo, key at +8
	psKeyFoo    = 0x40  // __SCK__foo
	psKeyBar    = 0x50  // __SCK__bar
	psKeyNoName = 0x1c0 // past __stop___jump_table, the last symbol
)

const psMap = `ffffffff81000000 T _stext
ffffffff81000000 T fn_a
ffffffff81000040 T fn_b
ffffffff81000100 T __SCT__foo
ffffffff81000108 T __SCT__bar
ffffffff81000110 T fn_c
ffffffff81000200 T _etext
ffffffff81000800 T _sinittext
ffffffff81000800 T init_fn
ffffffff81000840 T _einittext
ffffffff81001000 D plain_key
ffffffff81001010 D __tracepoint_foo
ffffffff81001040 D __SCK__foo
ffffffff81001050 D __SCK__bar
ffffffff81001060 D end_data
ffffffff81001100 D __start___jump_table
ffffffff81001140 D __stop___jump_table
`

type memSec struct {
	name string
	addr uint64
	data []byte
}

// patchELF lays the sections out in one PT_LOAD from psBase, each with a
// section header; a later section overwrites an earlier one's bytes.
func patchELF(secs []memSec) []byte {
	le := binary.LittleEndian
	const memOff = 0x1000
	shstr := []byte("\x00")
	names := make([]uint32, len(secs))
	for i, s := range secs {
		names[i] = uint32(len(shstr))
		shstr = append(append(shstr, s.name...), 0)
	}
	strName := uint32(len(shstr))
	shstr = append(shstr, ".shstrtab\x00"...)
	strOff := uint64(memOff + psSpan)
	shoff := (strOff + uint64(len(shstr)) + 7) &^ 7
	nsec := uint64(len(secs) + 2)
	out := make([]byte, shoff+nsec*64)
	for _, s := range secs {
		copy(out[memOff+s.addr-psBase:], s.data)
	}
	copy(out, "\x7fELF\x02\x01\x01")
	le.PutUint16(out[16:], 2)
	le.PutUint16(out[18:], 62)
	le.PutUint32(out[20:], 1)
	le.PutUint64(out[24:], 0x1000000)
	le.PutUint64(out[32:], 64)
	le.PutUint64(out[40:], shoff)
	le.PutUint16(out[52:], 64)
	le.PutUint16(out[54:], 56)
	le.PutUint16(out[56:], 1)
	le.PutUint16(out[58:], 64)
	le.PutUint16(out[60:], uint16(nsec))
	le.PutUint16(out[62:], uint16(nsec-1))
	ph := out[64:]
	le.PutUint32(ph, 1)
	le.PutUint64(ph[8:], memOff)
	le.PutUint64(ph[16:], psBase)
	le.PutUint64(ph[24:], 0x1000000)
	le.PutUint64(ph[32:], psSpan)
	le.PutUint64(ph[40:], psSpan)
	copy(out[strOff:], shstr)
	sh := func(i uint64, name uint32, typ uint32, addr, off, size uint64) {
		s := out[shoff+i*64:]
		le.PutUint32(s, name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[16:], addr)
		le.PutUint64(s[24:], off)
		le.PutUint64(s[32:], size)
	}
	for i, s := range secs {
		sh(uint64(i+1), names[i], 1, s.addr, memOff+s.addr-psBase, uint64(len(s.data)))
	}
	sh(nsec-1, strName, 3, 0, strOff, uint64(len(shstr)))
	return out
}

// tableBuilder appends entries whose relative fields are computed from
// their own link-time address.
type tableBuilder struct {
	addr uint64
	b    []byte
}

func (t *tableBuilder) here() uint64 { return t.addr + uint64(len(t.b)) }
func (t *tableBuilder) rel32(target uint64) *tableBuilder {
	t.b = binary.LittleEndian.AppendUint32(t.b, uint32(target-t.here()))
	return t
}
func (t *tableBuilder) rel64(target uint64) *tableBuilder {
	t.b = binary.LittleEndian.AppendUint64(t.b, target-t.here())
	return t
}
func (t *tableBuilder) u64(v uint64) *tableBuilder {
	t.b = binary.LittleEndian.AppendUint64(t.b, v)
	return t
}
func (t *tableBuilder) raw(b ...byte) *tableBuilder { t.b = append(t.b, b...); return t }

// psTableNames are the section-held tables, in slot order.
var psTableNames = []string{".altinstructions", ".retpoline_sites", ".return_sites", ".ibt_endbr_seal",
	".parainstructions", ".smp_locks", ".static_call_sites", "__mcount_loc", "__ex_table", "__jump_table"}

func psSlotAddr(name string) uint64 {
	return psTables + uint64(slices.Index(psTableNames, name))*psSlot
}

// psSections builds the fixture; the __jump_table slot is left out (the
// fixture's jump table is found through the map), tests may add it.
func psSections() []memSec {
	text := make([]byte, 0x200)
	for i := range text {
		text[i] = 0xcc
	}
	put := func(off int, b ...byte) { copy(text[off:], b) }
	put(psMcountCall, 0xe8, 0, 0, 0, 0)
	put(psJumpNop2, 0x66, 0x90)
	put(psJumpNop5, 0x0f, 0x1f, 0x44, 0, 0)
	put(psReturnJmp, 0xe9, 0, 0, 0, 0)
	put(psReturnJcc, 0x0f, 0x85, 0, 0, 0, 0)
	put(psLock, 0xf0, 0x48, 0xff, 0x07)
	put(psEndbr, 0xf3, 0x0f, 0x1e, 0xfa)
	put(psParavirt, 0xff, 0x15, 0, 0, 0, 0)
	put(psRetpoline, 0xe8, 0, 0, 0, 0)
	put(psStatic, 0xe8, 0, 0, 0, 0)
	put(psAlt, 0x90, 0x90, 0x90)
	put(0x1f0, 0x0f, 0x01, 0xca) // its replacement: clac
	put(psUaccess, 0x48, 0x8b, 0x07)
	put(psJumpJmp8, 0xeb, 0x00)
	put(psMcountNop, 0x0f, 0x1f, 0x44, 0, 0)
	put(psTrampSig, 0xe9, 0, 0, 0, 0, 0x0f, 0xb9, 0xcc)
	put(psTrampBare, 0xe9, 0, 0, 0, 0, 0xcc, 0xcc, 0xcc)
	put(psBadInsn, 0xd6)
	initText := []byte{0x0f, 0x1f, 0x44, 0, 0, 0xc3}

	tab := func(name string) *tableBuilder { return &tableBuilder{addr: psSlotAddr(name)} }
	alt := tab(".altinstructions")
	alt.rel32(psBase+psAlt).rel32(psBase+0x1f0).raw(0x10, 0x00, 3, 3) // X86_FEATURE 16, 3 bytes
	alt.rel32(psBase+psAlt).rel32(psBase+0x1f0).raw(0x11, 0x80, 0, 0) // empty: nothing patched
	retp := tab(".retpoline_sites").rel32(psBase + psRetpoline)
	rets := tab(".return_sites").rel32(psBase + psReturnJmp).rel32(psBase + psReturnJcc)
	endbr := tab(".ibt_endbr_seal").rel32(psBase + psEndbr)
	pv := tab(".parainstructions").u64(psBase+psParavirt).raw(1, 6, 0, 0, 0, 0, 0, 0)
	pv.u64(psBase+psParavirt).raw(2, 0, 0, 0, 0, 0, 0, 0) // len 0: nothing patched
	locks := tab(".smp_locks").rel32(psBase+psLock).raw(0, 0, 0, 0)
	sc := tab(".static_call_sites").rel32(psBase + psStatic).rel32(psData + psKeyFoo + 1) // STATIC_CALL_SITE_TAIL
	mc := tab("__mcount_loc").u64(psBase + psMcountCall).u64(0).u64(psBase + psMcountNop)
	ex := tab("__ex_table").rel32(psBase+psUaccess).rel32(psBase+0x1f0).raw(0, 0, 0, 0)

	jt := &tableBuilder{addr: psJump}
	jt.rel32(psBase + psJumpNop2).rel32(psBase + 0x1f0).rel64(psData + psKeyTP + 8 + 1)
	jt.rel32(psBase + psJumpNop5).rel32(psBase + 0x1f0).rel64(psData + psKeyPlain + 2)
	jt.rel32(psBase + psJumpJmp8).rel32(psBase + 0x1f0).rel64(psData + psKeyPlain)
	jt.rel32(psInit).rel32(psInit + 5).rel64(psData + psKeyNoName + 3)
	data := make([]byte, 0x200)
	copy(data[psJump-psData:], jt.b)

	secs := []memSec{
		{".text", psBase, text},
		{".init.text", psInit, initText},
		{".exit.text", psExit, []byte{0xc3, 0xcc}},
		{".data", psData, data},
	}
	for _, t := range []*tableBuilder{alt, retp, rets, endbr, pv, locks, sc, mc, ex} {
		secs = append(secs, memSec{psTableNames[(t.addr-psTables)/psSlot], t.addr, t.b})
	}
	return secs
}

// psWith replaces (or adds) a section's bytes, keeping its slot address.
func psWith(secs []memSec, name string, data []byte) []memSec {
	secs = slices.Clone(secs)
	for i := range secs {
		if secs[i].name == name {
			secs[i].data = data
			return secs
		}
	}
	return append(secs, memSec{name, psSlotAddr(name), data})
}

func psRead(t testing.TB, secs []memSec, smap string) (*PatchSites, error) {
	t.Helper()
	img, err := kimage.Open(patchELF(secs))
	if err != nil {
		t.Fatal(err)
	}
	var syms *SymbolTable
	if smap != "" {
		if syms, err = ParseSystemMap(strings.NewReader(smap)); err != nil {
			t.Fatal(err)
		}
	}
	return ReadPatchSites(img, syms)
}

func TestReadPatchSites(t *testing.T) {
	ps, err := psRead(t, psSections(), psMap)
	if err != nil {
		t.Fatal(err)
	}
	b, d := uint64(psBase), uint64(psData)
	want := []PatchSite{
		{Class: Mcount, Addr: b + psMcountCall, Len: 5, Call: true},
		{Class: JumpLabel, Addr: b + psJumpNop2, Len: 2, Key: d + psKeyTP + 8, KeyName: "__tracepoint_foo+0x8"},
		{Class: JumpLabel, Addr: b + psJumpNop5, Len: 5, Key: d + psKeyPlain, KeyName: "plain_key"},
		{Class: ReturnThunk, Addr: b + psReturnJmp, Len: 5},
		{Class: ReturnThunk, Addr: b + psReturnJcc, Len: 6},
		{Class: SMPLock, Addr: b + psLock, Len: 1},
		{Class: EndbrSeal, Addr: b + psEndbr, Len: 4},
		{Class: Paravirt, Addr: b + psParavirt, Len: 6},
		{Class: Retpoline, Addr: b + psRetpoline, Len: 5},
		{Class: StaticCall, Addr: b + psStatic, Len: 5, Key: d + psKeyFoo, KeyName: "__SCK__foo"},
		{Class: Alternative, Addr: b + psAlt, Len: 3, Repl: []byte{0x0f, 0x01, 0xca}},
		{Class: JumpLabel, Addr: b + psJumpJmp8, Len: 2, Key: d + psKeyPlain, KeyName: "plain_key"},
		{Class: Mcount, Addr: b + psMcountNop, Len: 5},
		{Class: StaticCallTrampoline, Addr: b + psTrampSig, Len: 8, Key: d + psKeyFoo, KeyName: "__SCK__foo"},
		{Class: StaticCallTrampoline, Addr: b + psTrampBare, Len: 5, Key: d + psKeyBar, KeyName: "__SCK__bar"},
		{Class: JumpLabel, Addr: psInit, Len: 5, Key: d + psKeyNoName},
	}
	if got := slices.Collect(ps.All()); !reflect.DeepEqual(got, want) {
		t.Errorf("sites:\n got %+v\nwant %+v", got, want)
	}
	if ps.Len() != len(want) {
		t.Errorf("Len = %d", ps.Len())
	}
	counts := map[PatchClass]int{Alternative: 1, Retpoline: 1, ReturnThunk: 2, Paravirt: 1, SMPLock: 1, EndbrSeal: 1,
		StaticCall: 1, StaticCallTrampoline: 2, JumpLabel: 4, Mcount: 2, 0: 0, numPatchClasses: 0, -1: 0}
	for c, n := range counts {
		if got := ps.Count(c); got != n {
			t.Errorf("Count(%v) = %d, want %d", c, got, n)
		}
	}

	classes := func(sites []PatchSite) []PatchClass {
		var out []PatchClass
		for _, s := range sites {
			out = append(out, s.Class)
		}
		return out
	}
	overlap := []struct {
		addr, n uint64
		want    []PatchClass
	}{
		{b + psAlt + 2, 1, []PatchClass{Alternative}},
		{b + psLock + 1, psEndbr - psLock - 1, nil}, // between the lock prefix and the endbr
		{b + psEndbr - 1, 2, []PatchClass{EndbrSeal}},
		{b, psReturnJmp + 1, []PatchClass{Mcount, JumpLabel, JumpLabel, ReturnThunk}},
		{b + psMcountCall + 4, 1, []PatchClass{Mcount}},
		{b + psTrampSig + 7, 1, []PatchClass{StaticCallTrampoline}},
		{b + psTrampBare + 5, 1, nil}, // no signature: 5 bytes only
		{b + psUaccess, 3, nil},
		{b + psAlt, 0, nil},
		{^uint64(0) - 1, 10, nil}, // wraps
		{0, 1, nil},
	}
	for _, tc := range overlap {
		if got := classes(ps.Overlapping(tc.addr, tc.n)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Overlapping(%#x, %d) = %v, want %v", tc.addr, tc.n, got, tc.want)
		}
	}

	if !ps.HasFixup(b+psUaccess) || ps.HasFixup(b+psUaccess+1) || ps.HasFixup(b+0x1f0) {
		t.Error("HasFixup: want exactly the __ex_table instruction")
	}
	for addr, want := range map[uint64]string{psInit + 3: ".init.text", psExit + 1: ".exit.text", psExit + 2: "", b + psAlt: "", psData: ""} {
		if got, ok := ps.Discarded(addr); got != want || ok != (want != "") {
			t.Errorf("Discarded(%#x) = %q, %v; want %q", addr, got, ok, want)
		}
	}
}

func TestReadPatchSitesWithoutMap(t *testing.T) {
	// Without a map the section-held tables are still read; the jump
	// table (map-only here), trampolines and key names are not.
	ps, err := psRead(t, psSections(), "")
	if err != nil {
		t.Fatal(err)
	}
	if n := ps.Count(JumpLabel) + ps.Count(StaticCallTrampoline); n != 0 {
		t.Errorf("%d jump labels and trampolines without a map", n)
	}
	sites := ps.Overlapping(psBase+psStatic, 1)
	if len(sites) != 1 || sites[0].Key != psData+psKeyFoo || sites[0].KeyName != "" {
		t.Errorf("static call site without a map: %+v", sites)
	}
	if ps.Count(Mcount) != 2 || !ps.HasFixup(psBase+psUaccess) {
		t.Errorf("mcount %d, fixup %v", ps.Count(Mcount), ps.HasFixup(psBase+psUaccess))
	}

	// Without an .init.text section the map's _sinittext.._einittext
	// stands in.
	secs := psSections()
	secs[slices.IndexFunc(secs, func(s memSec) bool { return s.name == ".init.text" })].name = ".init.bytes"
	ps, err = psRead(t, secs, psMap)
	if err != nil {
		t.Fatal(err)
	}
	if sec, ok := ps.Discarded(psInit + 0x3f); sec != ".init.text" || !ok {
		t.Errorf("Discarded(init text) = %q, %v", sec, ok)
	}

	// A table in a section wins over the map's symbols.
	jt := &tableBuilder{addr: psSlotAddr("__jump_table")}
	jt.rel32(psBase + psJumpJmp8).rel32(psBase).rel64(psData + psKeyBar)
	ps, err = psRead(t, psWith(psSections(), "__jump_table", jt.b), psMap)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Count(JumpLabel) != 1 {
		t.Errorf("%d jump labels, want the section's 1", ps.Count(JumpLabel))
	}
}

func TestReadPatchSitesErrors(t *testing.T) {
	jump := func(code uint64) []byte {
		jt := &tableBuilder{addr: psSlotAddr("__jump_table")}
		jt.rel32(psBase + psJumpNop2).rel32(psBase).rel64(psData)
		return jt.rel32(code).rel32(psBase).rel64(psData).b
	}
	base := psSections()
	alt := base[slices.IndexFunc(base, func(s memSec) bool { return s.name == ".altinstructions" })].data
	tests := []struct {
		name  string
		secs  []memSec
		smap  string
		table string
		index int
		msg   string
	}{
		{"truncated", psWith(base, ".altinstructions", append(slices.Clone(alt), 0)), psMap, ".altinstructions", 2, "truncated"},
		{"site outside the image", psWith(base, "__jump_table", jump(psBase+0x100000)), psMap, "__jump_table", 1, "instruction at 0xffffffff81100000"},
		{"jump label at a mov", psWith(base, "__jump_table", jump(psBase+psUaccess)), psMap, "__jump_table", 1, "not a 2- or 5-byte jmp or nop"},
		{"retpoline at no instruction", psWith(base, ".retpoline_sites", (&tableBuilder{addr: psSlotAddr(".retpoline_sites")}).rel32(psBase+psBadInsn).b), psMap, ".retpoline_sites", 0, "instruction at"},
		{"mcount at a nop2", psWith(base, "__mcount_loc", (&tableBuilder{}).u64(psBase+psMcountNop).u64(psBase+psJumpNop2).b), psMap, "__mcount_loc", 1, "not a 5-byte call or nop"},
		{"paravirt site at 0", psWith(base, ".parainstructions", (&tableBuilder{}).u64(0).raw(1, 6, 0, 0, 0, 0, 0, 0).b), psMap, ".parainstructions", 0, "not in the image"},
		{"alternative past the segment", psWith(base, ".altinstructions", (&tableBuilder{addr: psSlotAddr(".altinstructions")}).rel32(psBase+psSpan-2).rel32(psBase).raw(0, 0, 4, 4).b), psMap, ".altinstructions", 0, "not in the image"},
		{"map with a start and no stop", base, strings.Replace(psMap, "__stop___jump_table", "x", 1), "__jump_table", -1, "only one of"},
		{"map's stop below start", base, strings.Replace(psMap, "ffffffff81001140 D __stop___jump_table", "ffffffff81001000 D __stop___jump_table", 1), "__jump_table", -1, "below"},
		{"map's table outside the image", base, strings.Replace(psMap, "ffffffff81001140 D __stop___jump_table", "ffffffff81101140 D __stop___jump_table", 1), "__jump_table", -1, "not in the image"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := psRead(t, tc.secs, tc.smap)
			var pe *PatchTableError
			if !errors.As(err, &pe) || !errors.Is(err, ErrPatchTable) {
				t.Fatalf("err = %v, want a PatchTableError", err)
			}
			if pe.Table != tc.table || pe.Index != tc.index || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %q (table %q index %d), want table %q index %d and %q", err, pe.Table, pe.Index, tc.table, tc.index, tc.msg)
			}
		})
	}
}

func TestPatchClass(t *testing.T) {
	runtime := map[PatchClass]bool{JumpLabel: true, StaticCall: true, StaticCallTrampoline: true, Mcount: true}
	seen := map[string]bool{}
	for c := Alternative; c < numPatchClasses; c++ {
		if c.Runtime() != runtime[c] {
			t.Errorf("%v.Runtime() = %v", c, c.Runtime())
		}
		if s := c.String(); s == "" || strings.HasPrefix(s, "PatchClass(") || seen[s] {
			t.Errorf("class %d named %q", int(c), s)
		}
		seen[c.String()] = true
	}
	if s := PatchClass(0).String(); s != "PatchClass(0)" {
		t.Errorf("zero class %q", s)
	}
}

func TestKernelPatchSites(t *testing.T) {
	img, err := kimage.Open(patchELF(psSections()))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := ParseSystemMap(strings.NewReader(psMap))
	if err != nil {
		t.Fatal(err)
	}
	k := NewKernel(img, syms.Slid(0x200000)) // NewKernel keeps the unslid table
	p1, err1 := k.PatchSites()
	p2, err2 := k.PatchSites()
	if err1 != nil || err2 != nil || p1 != p2 {
		t.Fatalf("PatchSites = %p, %v then %p, %v", p1, err1, p2, err2)
	}
	if p1.Count(StaticCallTrampoline) != 2 || len(p1.Overlapping(psBase+psJumpNop2, 1)) != 1 {
		t.Errorf("trampolines %d, jump label: %v", p1.Count(StaticCallTrampoline), p1.Overlapping(psBase+psJumpNop2, 1))
	}
}

// kernelConfig reads the .config the image tooling keeps beside an image;
// nil when there is none.
func kernelConfig(t *testing.T, image string) map[string]bool {
	f, err := os.Open(filepath.Join(filepath.Dir(image), "config"))
	if err != nil {
		t.Logf("no config beside %s: %v", image, err)
		return nil
	}
	defer f.Close()
	cfg := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, ok := strings.CutSuffix(sc.Text(), "=y"); ok {
			cfg[name] = true
		}
	}
	return cfg
}

// patchClassConfig is the option without which a class has no sites.
var patchClassConfig = map[PatchClass]string{
	Retpoline:            "CONFIG_RETPOLINE",
	ReturnThunk:          "CONFIG_RETHUNK",
	Paravirt:             "CONFIG_PARAVIRT",
	SMPLock:              "CONFIG_SMP",
	EndbrSeal:            "CONFIG_X86_KERNEL_IBT",
	StaticCall:           "CONFIG_HAVE_STATIC_CALL_INLINE",
	StaticCallTrampoline: "CONFIG_HAVE_STATIC_CALL",
	JumpLabel:            "CONFIG_JUMP_LABEL",
	Mcount:               "CONFIG_DYNAMIC_FTRACE",
}

// checkRealPatchSites checks what must hold of any 6.1 x86-64 kernel:
// counts against the config, and every site's instruction against its
// class.
func checkRealPatchSites(t *testing.T, k *Kernel, image string) *PatchSites {
	t.Helper()
	start := time.Now()
	ps, err := ReadPatchSites(k.Image, k.Symbols)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d sites, %d fixups in %v", k.Image.Version, ps.Len(), len(ps.fixups), elapsed)
	cfg := kernelConfig(t, image)
	for c := Alternative; c < numPatchClasses; c++ {
		n := ps.Count(c)
		t.Logf("  %-22s %6d", c, n)
		if opt, ok := patchClassConfig[c]; ok && cfg != nil && cfg[opt] != (n > 0) {
			t.Errorf("%d %v sites with %s=%v", n, c, opt, cfg[opt])
		}
	}
	if ps.Count(Alternative) == 0 {
		t.Error("no alternatives")
	}

	syms := k.Symbols
	// target decodes the relative branch at a site and names its target.
	target := func(s PatchSite) (x86asm.Inst, string) {
		t.Helper()
		code, _ := k.Image.ReadVirt(s.Addr, int(s.Len))
		inst, err := x86asm.Decode(code, 64)
		if err != nil || uint64(inst.Len) != s.Len {
			t.Fatalf("%v site %s: % x decodes as %v (%d bytes), %v", s.Class, syms.FormatAddr(s.Addr), code, inst, inst.Len, err)
		}
		rel, ok := inst.Args[0].(x86asm.Rel)
		if !ok {
			return inst, ""
		}
		sym, off, ok := syms.SymbolAt(s.Addr + s.Len + uint64(int64(rel)))
		if !ok || off != 0 {
			return inst, ""
		}
		return inst, sym.Name
	}
	isBranch := func(op x86asm.Op) bool {
		return op == x86asm.JMP || (op >= x86asm.JA && op <= x86asm.JS && op != x86asm.JCXZ && op != x86asm.JECXZ && op != x86asm.JRCXZ)
	}
	fentry, _ := syms.Lookup("__fentry__")
	bad := map[PatchClass]int{}
	fail := func(s PatchSite, format string, args ...any) {
		if bad[s.Class]++; bad[s.Class] <= 3 {
			t.Errorf("%v site %s: "+format, append([]any{s.Class, syms.FormatAddr(s.Addr)}, args...)...)
		}
	}
	unnamed := 0 // mcount sites at no symbol
	for s := range ps.All() {
		code, ok := k.Image.ReadVirt(s.Addr, int(s.Len))
		if !ok || s.Len == 0 {
			fail(s, "%d bytes not in the image", s.Len)
			continue
		}
		switch s.Class {
		case Retpoline:
			if inst, name := target(s); (inst.Op != x86asm.CALL && !isBranch(inst.Op)) || !strings.HasPrefix(name, "__x86_indirect_thunk_") {
				fail(s, "%v to %q", inst, name)
			}
		case ReturnThunk:
			if inst, name := target(s); !isBranch(inst.Op) || name != "__x86_return_thunk" {
				fail(s, "%v to %q", inst, name)
			}
		case StaticCall:
			inst, name := target(s)
			fn, ok := strings.CutPrefix(s.KeyName, "__SCK__")
			if (inst.Op != x86asm.CALL && !isBranch(inst.Op)) || !ok || name != "__SCT__"+fn {
				fail(s, "%v to %q with key %q", inst, name, s.KeyName)
			}
		case StaticCallTrampoline:
			if !strings.HasPrefix(s.KeyName, "__SCK__") || s.Len != 8 {
				fail(s, "key %q, %d bytes", s.KeyName, s.Len)
			}
		case JumpLabel:
			inst, err := x86asm.Decode(code, 64)
			if err != nil || (inst.Op != x86asm.JMP && inst.Op != x86asm.NOP) || s.KeyName == "" {
				fail(s, "% x (%v) key %#x %q", code, inst, s.Key, s.KeyName)
			}
		case Mcount:
			if s.Len != 5 {
				fail(s, "%d bytes", s.Len)
			}
			if _, off, ok := syms.SymbolAt(s.Addr); !ok || off != 0 {
				unnamed++
			}
			if _, name := target(s); s.Call && name != "__fentry__" {
				fail(s, "calls %q, not __fentry__ at %#x", name, fentry.Addr)
			}
		case SMPLock:
			if code[0] != 0xf0 {
				fail(s, "%#x is not a lock prefix", code[0])
			}
		}
	}

	// An overridden __weak function keeps its code and its __mcount_loc
	// entry but loses its symbol (6.1's ftrace disables such records at
	// boot through kallsyms); every other mcount site starts a function.
	if n := ps.Count(Mcount); unnamed > n/50 {
		t.Errorf("%d of %d mcount sites are not at a function start", unnamed, n)
	} else if n > 0 {
		t.Logf("%d of %d mcount sites are in functions without a symbol (overridden weak ones)", unnamed, n)
	}

	if s, err := syms.Lookup("start_kernel"); err != nil {
		t.Error(err)
	} else if sec, ok := ps.Discarded(s.Addr); sec != ".init.text" || !ok {
		t.Errorf("start_kernel discarded: %q, %v", sec, ok)
	}
	if s, err := syms.Lookup("do_sys_openat2"); err != nil {
		t.Error(err)
	} else if sec, ok := ps.Discarded(s.Addr); ok {
		t.Errorf("do_sys_openat2 in discarded %s", sec)
	}

	// arch/x86/lib/getuser.S: __get_user_1's user load has a fixup.
	gu, err := syms.Lookup("__get_user_1")
	if err != nil {
		t.Fatal(err)
	}
	var loads []string
	for a := gu.Addr; a < gu.Addr+gu.Size; a++ {
		if ps.HasFixup(a) {
			code, _ := k.Image.ReadVirt(a, 8)
			inst, _ := x86asm.Decode(code, 64)
			loads = append(loads, inst.String())
		}
	}
	if len(loads) == 0 || !strings.HasPrefix(loads[0], "MOVZX") {
		t.Errorf("__get_user_1's fixed-up instructions: %q", loads)
	}
	return ps
}

func TestRealStockPatchSites(t *testing.T) {
	image, smap := realFiles(t, "stock/vmlinuz", "stock/System.map")
	k, err := OpenKernel(image, smap)
	if err != nil {
		t.Fatal(err)
	}
	ps := checkRealPatchSites(t, k, image)
	syms := k.Symbols

	// Debian builds with gcc -mrecord-mcount and no objtool --mcount: the
	// image holds call __fentry__, which ftrace_init nops at boot.
	calls := 0
	for s := range ps.All() {
		if s.Class == Mcount && s.Call {
			calls++
		}
	}
	if calls != ps.Count(Mcount) {
		t.Errorf("%d of %d mcount sites are calls", calls, ps.Count(Mcount))
	}
	// No CONFIG_X86_KERNEL_IBT: functions start with call __fentry__, not
	// endbr64, so a probe on a function's first byte is on an mcount site.
	fn, _ := syms.Lookup("do_sys_openat2")
	if sites := ps.Overlapping(fn.Addr, 1); len(sites) != 1 || sites[0].Class != Mcount || !sites[0].Call {
		t.Errorf("do_sys_openat2+0: %+v", sites)
	}

	// do_one_initcall's trace_initcall_start(): a static branch on the key
	// in struct tracepoint (after its name pointer) to the tracepoint call.
	init, _ := syms.Lookup("do_one_initcall")
	var found []PatchSite
	for _, s := range ps.Overlapping(init.Addr, init.Size) {
		if s.Class == JumpLabel && s.KeyName == "__tracepoint_initcall_start+0x8" {
			found = append(found, s)
		}
	}
	tp, _ := syms.Lookup("__tracepoint_initcall_start")
	if len(found) != 1 || found[0].Key != tp.Addr+8 {
		t.Fatalf("do_one_initcall's initcall_start jump labels: %+v", found)
	}
	code, _ := k.Image.ReadVirt(found[0].Addr, int(found[0].Len))
	t.Logf("jump label at %s: % x", syms.FormatAddr(found[0].Addr), code)
	if inst, err := x86asm.Decode(code, 64); err != nil || inst.Op != x86asm.NOP {
		t.Errorf("the site is % x, want a nop (the key starts disabled)", code)
	}
}

func TestRealMiniPatchSites(t *testing.T) {
	image, smap := realFiles(t, "mini/current/bzImage", "mini/current/System.map")
	k, err := OpenKernel(image, smap)
	if err != nil {
		t.Fatal(err)
	}
	checkRealPatchSites(t, k, image)
}

func BenchmarkReadPatchSites(b *testing.B) {
	image, smap := filepath.Join("..", ".cache", "images", "stock", "vmlinuz"), filepath.Join("..", ".cache", "images", "stock", "System.map")
	k, err := OpenKernel(image, smap)
	if errors.Is(err, os.ErrNotExist) {
		b.Skip("stock kernel not present")
	}
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := ReadPatchSites(k.Image, k.Symbols); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzReadPatchSites(f *testing.F) {
	for i, s := range psSections() {
		if slices.Contains(psTableNames, s.name) {
			f.Add(uint8(i), s.data)
		}
	}
	f.Add(uint8(len(psTableNames)-1), []byte("\x05\xf0\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, table uint8, data []byte) {
		name := psTableNames[int(table)%len(psTableNames)]
		ps, err := psRead(t, psWith(psSections(), name, data[:min(len(data), psSlot)]), psMap)
		if err != nil {
			if !errors.Is(err, ErrPatchTable) {
				t.Fatalf("error %v is not ErrPatchTable", err)
			}
			return
		}
		prev := uint64(0)
		for s := range ps.All() {
			if s.Addr < prev || s.Len == 0 || s.End() < s.Addr {
				t.Fatalf("site %+v after %#x", s, prev)
			}
			prev = s.Addr
			if !slices.ContainsFunc(ps.Overlapping(s.Addr+s.Len-1, 1), func(o PatchSite) bool { return reflect.DeepEqual(o, s) }) {
				t.Fatalf("Overlapping(%#x, 1) misses %+v", s.Addr+s.Len-1, s)
			}
		}
	})
}

// TestEntered: only a landing strictly inside (addr, addr+n) counts;
// one at addr is the start of the range, one at its end is past it.
func TestEntered(t *testing.T) {
	p := &PatchSites{entries: []uint64{0x1000, 0x1008, 0x2000}}
	for _, c := range []struct {
		addr, n uint64
		want    bool
	}{
		{0x1000, 8, false}, {0x1001, 8, true}, {0x1008, 8, false}, {0x1ff0, 0x11, true}, {0x3000, 5, false},
	} {
		if got := p.Entered(c.addr, c.n); got != c.want {
			t.Errorf("Entered(%#x, %d) = %v, want %v", c.addr, c.n, got, c.want)
		}
	}
}
