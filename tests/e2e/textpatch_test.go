package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/session"
)

// Text the guest rewrites while it runs: the workload's hvwl_keyed has one
// jump-label site (its static branch on hvwl_key), which static:N:K and
// staticrace:K:N rewrite through text_poke_bp while probes sit next to it.

// jumpEntrySize is sizeof(struct jump_entry) on x86-64 6.1 with
// CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE: {s32 code; s32 target; long key;},
// each field relative to its own address; key's low two bits are flags
// (bit 0 branch, bit 1 init).
const jumpEntrySize = 16

// jumpSite is one __jump_table entry, as absolute addresses.
type jumpSite struct {
	Code   uint64 // the site: a 2- or 5-byte nop or jmp
	Target uint64 // where the jmp goes: the branch taken when the key says so
	Key    uint64 // the struct static_key
	Branch bool   // entry key bit 0: the branch's default direction
	Init   bool   // entry key bit 1: the site is in init text
}

// parseJumpTable decodes a struct jump_entry array that the guest keeps
// at virtual address va.
func parseJumpTable(b []byte, va uint64) ([]jumpSite, error) {
	if len(b)%jumpEntrySize != 0 {
		return nil, fmt.Errorf("__jump_table is %d bytes, not a multiple of %d", len(b), jumpEntrySize)
	}
	le := binary.LittleEndian
	var sites []jumpSite
	for off := 0; off < len(b); off += jumpEntrySize {
		e := va + uint64(off)
		key := int64(le.Uint64(b[off+8:]))
		sites = append(sites, jumpSite{
			Code:   e + uint64(int64(int32(le.Uint32(b[off:])))),
			Target: e + 4 + uint64(int64(int32(le.Uint32(b[off+4:])))),
			Key:    e + 8 + uint64(key&^3),
			Branch: key&1 != 0,
			Init:   key&2 != 0,
		})
	}
	return sites, nil
}

// jumpSitesIn returns the jump-label sites inside symbol sym of the
// running guest, read from the kernel's own __jump_table (sorted by key
// at boot, which keeps every entry's relative fields right).
func jumpSitesIn(k *session.RunningKernel, sym string) ([]jumpSite, error) {
	lo, size, err := symbolExtent(k, sym)
	if err != nil {
		return nil, err
	}
	start, err := k.Resolve("__start___jump_table", 0)
	if err != nil {
		return nil, fmt.Errorf("no __jump_table (CONFIG_JUMP_LABEL off?): %w", err)
	}
	stop, err := k.Resolve("__stop___jump_table", 0)
	if err != nil {
		return nil, err
	}
	b := make([]byte, stop-start)
	if err := k.ReadVirt(start, b); err != nil {
		return nil, fmt.Errorf("reading __jump_table: %w", err)
	}
	all, err := parseJumpTable(b, start)
	if err != nil {
		return nil, err
	}
	var in []jumpSite
	for _, s := range all {
		if s.Code >= lo && s.Code < lo+size {
			in = append(in, s)
		}
	}
	return in, nil
}

// symbolExtent returns sym's address and size.
func symbolExtent(k *session.RunningKernel, sym string) (addr, size uint64, err error) {
	addr, err = k.Resolve(sym, 0)
	if err != nil {
		return 0, 0, err
	}
	name, off, size, ok := k.SymbolAt(addr)
	if !ok || name != sym || off != 0 || size == 0 {
		return 0, 0, fmt.Errorf("%s at %#x: symbol lookup says %s+%#x/%#x", sym, addr, name, off, size)
	}
	return addr, size, nil
}

// siteBytes is what a jump-label site of n bytes holds: x86_nops[n]
// while its branch is not taken, a jmp to target while it is.
func siteBytes(code, target uint64, n int, jump bool) []byte {
	switch {
	case !jump && n == 2:
		return []byte{0x66, 0x90}
	case !jump && n == 5:
		return []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	case jump && n == 2:
		return []byte{0xeb, byte(int8(target - (code + 2)))}
	case jump && n == 5:
		b := []byte{0xe9, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[1:], uint32(int32(target-(code+5))))
		return b
	}
	return nil
}

func TestParseJumpTable(t *testing.T) {
	const va = 0xffffffff82000000
	b := make([]byte, 2*jumpEntrySize)
	le := binary.LittleEndian
	// Entry 0: code 0x1000 below it, target 0xff0 below its target field,
	// key 0x200 above its key field, branch set.
	le.PutUint32(b[0:], uint32(0xfffff000))
	le.PutUint32(b[4:], uint32(0xfffff010))
	le.PutUint64(b[8:], 0x200|1)
	// Entry 1: key below it (negative), init set.
	le.PutUint32(b[16:], uint32(0xffffe000))
	le.PutUint32(b[20:], uint32(0xffffe008))
	le.PutUint64(b[24:], uint64(0xffffffffffff0000|2))
	got, err := parseJumpTable(b, va)
	if err != nil {
		t.Fatal(err)
	}
	want := []jumpSite{
		{Code: va - 0x1000, Target: va + 4 - 0xff0, Key: va + 8 + 0x200, Branch: true},
		{Code: va + 16 - 0x2000, Target: va + 20 - 0x1ff8, Key: va + 24 - 0x10000, Init: true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parsed %+v, want %+v", got, want)
	}
	if _, err := parseJumpTable(b[:17], va); err == nil {
		t.Fatal("a table of 17 bytes parsed")
	}
	if s := siteBytes(0x1000, 0x1010, 2, true); !bytes.Equal(s, []byte{0xeb, 0x0e}) {
		t.Errorf("jmp8 = % x", s)
	}
	if s := siteBytes(0x1000, 0x0f00, 5, true); !bytes.Equal(s, []byte{0xe9, 0xfb, 0xfe, 0xff, 0xff}) {
		t.Errorf("jmp32 = % x", s)
	}
}

// keyedLayout is hvwl_keyed as the test sees it: its one jump-label site,
// where each arm starts and an instruction before the branch.
type keyedLayout struct {
	fn, size uint64
	site     jumpSite
	siteLen  int
	entry    uint64 // offsets from fn
	pre      uint64 // the last instruction before the site: runs every call
	on, off  uint64 // first instructions of the arms (jmp target, fall-through)
}

// layoutKeyed decodes hvwl_keyed from its start and finds its site.
func layoutKeyed(t *testing.T, g *guest) keyedLayout {
	t.Helper()
	k := g.a.Kernel
	sites, err := jumpSitesIn(k, "hvwl_keyed")
	if err != nil {
		t.Fatal(err)
	}
	if len(sites) != 1 {
		t.Fatalf("hvwl_keyed has %d jump-label sites, want 1: %+v", len(sites), sites)
	}
	key, err := k.Resolve("hvwl_key", 0)
	if err != nil {
		t.Fatal(err)
	}
	s := sites[0]
	if s.Key != key || s.Branch || s.Init {
		t.Fatalf("hvwl_keyed's site %+v: want key hvwl_key (%#x), branch and init clear", s, key)
	}
	l := keyedLayout{site: s}
	if l.fn, l.size, err = symbolExtent(k, "hvwl_keyed"); err != nil {
		t.Fatal(err)
	}
	code := make([]byte, l.size)
	if err := k.ReadVirt(l.fn, code); err != nil {
		t.Fatal(err)
	}
	siteOff := s.Code - l.fn
	insts := map[uint64]x86asm.Inst{}
	var beforeSite []uint64
	for off := uint64(0); off < l.size; {
		inst, err := x86dec.Decode(code[off:])
		if err != nil {
			t.Fatalf("decoding hvwl_keyed+%#x: %v", off, err)
		}
		insts[off] = inst
		if off < siteOff {
			// Straight-line code from the entry to the site runs on
			// every call.
			if transfersControl(inst.Op) {
				t.Fatalf("hvwl_keyed+%#x (%v) branches before the jump-label site at +%#x", off, inst, siteOff)
			}
			beforeSite = append(beforeSite, off)
		}
		off += uint64(inst.Len)
	}
	site, ok := insts[siteOff]
	if !ok || (site.Len != 2 && site.Len != 5) {
		t.Fatalf("the jump-label site hvwl_keyed+%#x is not a 2- or 5-byte instruction (%v)", siteOff, site)
	}
	l.siteLen = site.Len
	if len(beforeSite) == 0 {
		t.Fatal("no instruction before hvwl_keyed's jump-label site")
	}
	l.pre = beforeSite[len(beforeSite)-1]
	l.on, l.off = s.Target-l.fn, siteOff+uint64(site.Len)
	for _, o := range []uint64{l.on, l.off} {
		if _, ok := insts[o]; !ok || o == siteOff {
			t.Fatalf("arm at hvwl_keyed+%#x is not an instruction boundary apart from the site +%#x", o, siteOff)
		}
	}
	if l.pre == l.entry {
		t.Fatalf("hvwl_keyed's only instruction before the site is its entry: %v", insts[0])
	}
	t.Logf("hvwl_keyed: %d bytes, site +%#x (%d bytes, % x), on arm +%#x (%v), off arm +%#x (%v), before the site +%#x (%v)",
		l.size, siteOff, site.Len, code[siteOff:siteOff+uint64(site.Len)], l.on, insts[l.on], l.off, insts[l.off], l.pre, insts[l.pre])
	return l
}

// transfersControl: op may leave the straight line (jmp, jcc, call, ret,
// loop).
func transfersControl(op x86asm.Op) bool {
	switch op {
	case x86asm.CALL, x86asm.RET, x86asm.LCALL, x86asm.LRET, x86asm.LJMP, x86asm.IRET, x86asm.IRETD, x86asm.IRETQ,
		x86asm.LOOP, x86asm.LOOPE, x86asm.LOOPNE, x86asm.UD2, x86asm.INT, x86asm.SYSCALL:
		return true
	}
	return strings.HasPrefix(op.String(), "J")
}

// keyEnabled reads hvwl_key.enabled (struct static_key starts with its
// atomic_t enabled).
func keyEnabled(t *testing.T, g *guest) bool {
	t.Helper()
	va, err := g.a.Kernel.Resolve("hvwl_key", 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	if err := g.a.Kernel.ReadVirt(va, b[:]); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(b[:]) != 0
}

// text reads hvwl_keyed's bytes.
func (l keyedLayout) text(t *testing.T, g *guest) []byte {
	t.Helper()
	b := make([]byte, l.size)
	if err := g.a.Kernel.ReadVirt(l.fn, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// checkSite fails unless the site holds what the guest writes for the key
// state enabled.
func (l keyedLayout) checkSite(t *testing.T, text []byte, enabled bool, when string) {
	t.Helper()
	off := l.site.Code - l.fn
	got := text[off : off+uint64(l.siteLen)]
	if want := siteBytes(l.site.Code, l.site.Target, l.siteLen, enabled); !bytes.Equal(got, want) {
		t.Fatalf("%s: site hvwl_keyed+%#x holds % x; with hvwl_key enabled=%v the guest writes % x", when, off, got, enabled, want)
	}
}

// sameOutsideSite fails unless a and b differ at most in the site.
func (l keyedLayout) sameOutsideSite(t *testing.T, a, b []byte, when string) {
	t.Helper()
	off := int(l.site.Code - l.fn)
	for i := range a {
		if (i < off || i >= off+l.siteLen) && a[i] != b[i] {
			t.Fatalf("%s: hvwl_keyed+%#x is %#x, was %#x unprobed", when, i, b[i], a[i])
		}
	}
}

// keyedProbes are counting kprobes on hvwl_keyed's entry, the instruction
// before the site and the first instruction of each arm.
type keyedProbes struct {
	ps                  []*kprobes.Kprobe
	entry, pre, on, off atomic.Int64
}

func (kp *keyedProbes) register(t *testing.T, g *guest, l keyedLayout) {
	t.Helper()
	kp.ps = []*kprobes.Kprobe{
		counting("hvwl_keyed", l.entry, &kp.entry),
		counting("hvwl_keyed", l.pre, &kp.pre),
		counting("hvwl_keyed", l.on, &kp.on),
		counting("hvwl_keyed", l.off, &kp.off),
	}
	for _, p := range kp.ps {
		register(t, g.a.Manager, p)
	}
}

// unregister removes the probes; a *kprobes.TextModifiedError here would
// mean the engine saw the guest's rewrite land on one of its bytes.
func (kp *keyedProbes) unregister(t *testing.T, g *guest) {
	t.Helper()
	for _, p := range kp.ps {
		unregister(t, g.a.Manager, p)
		if p.NMissed() != 0 {
			t.Errorf("%s+%#x: nmissed %d", p.Symbol, p.Offset, p.NMissed())
		}
	}
}

// check compares the hit counts with the workload's own counts.
func (kp *keyedProbes) check(t *testing.T, l keyedLayout, total, on, off int64) {
	t.Helper()
	for _, c := range []struct {
		what string
		off  uint64
		got  int64
		want int64
	}{
		{"entry", l.entry, kp.entry.Load(), total},
		{"before the site", l.pre, kp.pre.Load(), total},
		{"on arm", l.on, kp.on.Load(), on},
		{"off arm", l.off, kp.off.Load(), off},
	} {
		if c.got != c.want {
			t.Errorf("hvwl_keyed+%#x (%s): %d hits, the workload counted %d", c.off, c.what, c.got, c.want)
		}
	}
}

// TestKprobesBesideJumpLabel: while the guest flips hvwl_key many times
// (each flip rewrites hvwl_keyed's jump-label site through text_poke_bp),
// kprobes on hvwl_keyed's entry and on the instruction before the site
// count every call, kprobes on the first instruction of each arm count
// exactly the calls that took that arm, and after they are removed the
// function's text is the unprobed text, with the site as the guest last
// wrote it.
func TestKprobesBesideJumpLabel(t *testing.T) {
	g := miniGuest(t)
	// Start from the key off, whatever an earlier run left.
	g.run(t, "static:0:0")
	l := layoutKeyed(t, g)
	before := l.text(t, g)
	l.checkSite(t, before, false, "unprobed, key off")

	// The site itself is refused, in the running guest too, with the
	// reason, and nothing is written.
	site := &kprobes.Kprobe{Addr: l.site.Code, PreHandler: func(*kprobes.Context) bool { return false }}
	if err := g.a.Manager.Register(site); !errors.Is(err, kprobes.ErrPatchedText) || !strings.Contains(err.Error(), "jump label (key hvwl_key)") {
		t.Fatalf("a kprobe on the jump-label site: %v, want it refused as a jump label of hvwl_key", err)
	}
	if !bytes.Equal(l.text(t, g), before) {
		t.Fatal("the refused probe changed the text")
	}

	var kp keyedProbes
	kp.register(t, g, l)
	const n, k = 1000, 5
	r := report(t, g.run(t, fmt.Sprintf("static:%d:%d", n, k)), "static")
	armed := l.text(t, g)
	kp.unregister(t, g)
	after := l.text(t, g)

	total, on, off := num(t, r, "n"), num(t, r, "on"), num(t, r, "off")
	t.Logf("workload: %v; hits: entry %d, before the site %d, on arm %d, off arm %d",
		r, kp.entry.Load(), kp.pre.Load(), kp.on.Load(), kp.off.Load())
	if total != n || on+off != n || num(t, r, "bad") != 0 || num(t, r, "flips") != (n-1)/k {
		t.Fatalf("workload report %v: want n=%d, on+off=n, flips=%d, bad=0", r, n, (n-1)/k)
	}
	// The flips alternate the key every k calls from off: on = the calls in
	// odd-numbered blocks of k.
	var wantOn int64
	for i := int64(0); i < n; i++ {
		if (i/k)%2 == 1 {
			wantOn++
		}
	}
	if on != wantOn {
		t.Fatalf("workload counted %d calls on the on arm, the schedule gives %d", on, wantOn)
	}
	kp.check(t, l, total, on, off)

	// The site is whatever the guest last wrote; everything else is as
	// before the probes.
	enabled := num(t, r, "key") != 0
	if enabled != keyEnabled(t, g) || enabled != ((n-1)/k%2 == 1) {
		t.Fatalf("key=%v reported, hvwl_key.enabled=%v in memory, %d flips", enabled, keyEnabled(t, g), (n-1)/k)
	}
	l.checkSite(t, armed, enabled, "probes armed, after the flips")
	l.checkSite(t, after, enabled, "probes removed")
	l.sameOutsideSite(t, before, after, "probes removed")

	// Turning the key off again gives back the text of the start, byte for
	// byte, and the function still computes what it did.
	r = report(t, g.run(t, "static:10:0"), "static")
	if num(t, r, "on") != 0 || num(t, r, "off") != 10 || num(t, r, "bad") != 0 {
		t.Fatalf("unprobed rerun: %v", r)
	}
	if final := l.text(t, g); !bytes.Equal(before, final) {
		l.sameOutsideSite(t, before, final, "key off again")
		l.checkSite(t, final, false, "key off again")
		t.Fatalf("hvwl_keyed differs from its unprobed text: % x, was % x", final, before)
	}
	if err := g.a.Manager.Err(); err != nil {
		t.Errorf("engine error: %v", err)
	}
}

// TestKprobesBesideJumpLabelSMP: a kthread bound to each of two vCPUs
// calls hvwl_keyed while the workload flips hvwl_key as fast as it can,
// so a vCPU may meet the site while text_poke_bp has its int3 there (the
// engine must give that int3 to the guest, whose poke_int3_handler
// emulates the site). The counts are exact all the same.
func TestKprobesBesideJumpLabelSMP(t *testing.T) {
	g := twoCPUGuest(t)
	g.run(t, "static:0:0")
	l := layoutKeyed(t, g)
	before := l.text(t, g)
	l.checkSite(t, before, false, "unprobed, key off")

	m := g.a.Manager
	vs := g.s.VM.Stats()
	bp0, st0 := vs.Breakpoint.Load(), m.Stats()
	var kp keyedProbes
	kp.register(t, g, l)
	r := report(t, g.run(t, "staticrace:2:3000"), "staticrace")
	kp.unregister(t, g)
	bp1, st1 := vs.Breakpoint.Load(), m.Stats()
	after := l.text(t, g)

	total, on, off := num(t, r, "total"), num(t, r, "on"), num(t, r, "off")
	// int3 exits the engine did not count as its own hits (PVM reports
	// every int3 as an emulation failure): the guest's.
	t.Logf("workload: %v; hits: entry %d, before the site %d, on arm %d, off arm %d; "+
		"int3 exits %d, engine hits %d, raced %d: %d int3s were not the engine's",
		r, kp.entry.Load(), kp.pre.Load(), kp.on.Load(), kp.off.Load(),
		bp1-bp0, st1.Hits-st0.Hits, st1.Raced-st0.Raced, int64(bp1-bp0)-int64(st1.Hits-st0.Hits))
	if total != 2*3000 || on+off != total || num(t, r, "bad") != 0 || num(t, r, "flips") == 0 {
		t.Fatalf("workload report %v: want total=6000=on+off, flips>0, bad=0", r)
	}
	kp.check(t, l, total, on, off)
	enabled := num(t, r, "key") != 0
	if enabled != keyEnabled(t, g) {
		t.Fatalf("key=%v reported, hvwl_key.enabled=%v in memory", enabled, keyEnabled(t, g))
	}
	l.checkSite(t, after, enabled, "probes removed")
	l.sameOutsideSite(t, before, after, "probes removed")
	if err := m.Err(); err != nil {
		t.Errorf("engine error: %v", err)
	}
}
