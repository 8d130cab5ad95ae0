package guest

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sort"
	"strings"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"github.com/hvprobe/hvprobe/kimage"
)

// The kernel rewrites its own text: once during start_kernel
// (alternative_instructions, apply_paravirt, ftrace_init), which on the
// stock kernel runs after hvprobe attaches, and again while it runs
// (static keys, static calls, ftrace). An int3 armed in such bytes is
// overwritten, or is copied into the rewritten instruction, so the probe
// layer needs to know, before the guest boots, which bytes those are. This
// file reads that from the vmlinux's own tables (the layouts are Linux 6.1
// x86-64's; each reader names the header it mirrors).

// PatchClass says which kernel mechanism rewrites a patch site.
type PatchClass int

const (
	// Alternative: .altinstructions (struct alt_instr), replaced by
	// apply_alternatives according to CPU features.
	Alternative PatchClass = iota + 1
	// Retpoline: .retpoline_sites, a call/jmp/jcc to a
	// __x86_indirect_thunk_* that apply_retpolines may turn into an
	// indirect branch or an lfence'd one.
	Retpoline
	// ReturnThunk: .return_sites, a jmp/jcc to __x86_return_thunk that
	// apply_returns may turn into ret.
	ReturnThunk
	// Paravirt: .parainstructions (struct paravirt_patch_site), patched by
	// apply_paravirt for the hypervisor found.
	Paravirt
	// SMPLock: .smp_locks, a lock prefix that becomes a ds prefix on a
	// uniprocessor boot (and back again on CPU hotplug).
	SMPLock
	// EndbrSeal: .ibt_endbr_seal, an endbr64 that apply_ibt_endbr turns
	// into a nop under IBT.
	EndbrSeal
	// StaticCall: .static_call_sites, a call/jmp/jcc to a static-call
	// trampoline that static_call_update retargets (and inlines at boot).
	StaticCall
	// StaticCallTrampoline: an __SCT__* trampoline in .static_call.text:
	// its jmp is retargeted by static_call_update and its signature
	// bytes are checked before every update.
	StaticCallTrampoline
	// JumpLabel: __jump_table (struct jump_entry), a jmp or nop flipped
	// by static_key_enable/disable.
	JumpLabel
	// Mcount: __mcount_loc, a function's ftrace call site: a call to
	// __fentry__ that ftrace_init turns into a nop at boot, and that ftrace
	// turns into a call whenever a tracer (or kprobe on ftrace) is enabled
	// on the function.
	Mcount

	numPatchClasses = iota + 1
)

var patchClassNames = [numPatchClasses]string{
	Alternative:          "alternative",
	Retpoline:            "retpoline",
	ReturnThunk:          "return thunk",
	Paravirt:             "paravirt",
	SMPLock:              "SMP lock prefix",
	EndbrSeal:            "endbr seal",
	StaticCall:           "static call",
	StaticCallTrampoline: "static call trampoline",
	JumpLabel:            "jump label",
	Mcount:               "ftrace mcount",
}

func (c PatchClass) String() string {
	if c > 0 && c < numPatchClasses {
		return patchClassNames[c]
	}
	return fmt.Sprintf("PatchClass(%d)", int(c))
}

// Runtime reports whether the kernel rewrites sites of this class while
// it runs. The other classes are rewritten once during boot, so a probe
// there is safe once boot is over (and wrong before).
func (c PatchClass) Runtime() bool {
	switch c {
	case JumpLabel, StaticCall, StaticCallTrampoline, Mcount:
		return true
	}
	return false
}

// PatchSite is a range of kernel text the kernel may rewrite. Addresses
// are link-time (unslid).
type PatchSite struct {
	Class PatchClass
	Addr  uint64
	Len   uint64
	// Key is the static_key (JumpLabel) or static_call_key (StaticCall,
	// StaticCallTrampoline) whose updates rewrite the site; 0 for the
	// other classes.
	Key uint64
	// KeyName names Key through the symbol table ("__SCK__might_resched",
	// "__tracepoint_sched_switch+0x8"); "" when unknown.
	KeyName string
	// Repl is an Alternative's replacement: apply_alternatives copies it
	// over the site (relative branches in it retargeted) and pads the rest
	// with nops.
	Repl []byte
	// Call is set for an Mcount site whose image bytes are a call (to
	// __fentry__, nopped by ftrace_init at boot); clear when they are
	// already a nop, rewritten only when ftrace is enabled there.
	Call bool
}

// Replaced is what apply_alternatives leaves at an Alternative site: Repl,
// then nops to the site's length (its relative branches not yet
// retargeted, which changes no instruction's length or kind).
func (s PatchSite) Replaced() []byte {
	return append(bytes.Clone(s.Repl), bytes.Repeat([]byte{0x90}, int(s.Len)-len(s.Repl))...)
}

// End is the first address after the site.
func (s PatchSite) End() uint64 { return s.Addr + s.Len }

// PatchSites is what the kernel image says about its self-patching: the
// patch sites, exception-table fixups and text freed after boot. It is
// immutable and safe for concurrent use.
type PatchSites struct {
	sites  []PatchSite // by Addr, then Class
	maxLen uint64      // the longest site, to bound Overlapping's search
	counts [numPatchClasses]int
	fixups []uint64 // __ex_table instruction addresses, ascending
	// entries are where the kernel's tables send control other than by
	// the code's own branches: exception fixups and jump-label targets,
	// ascending.
	entries   []uint64
	discarded []namedRange
}

type namedRange struct {
	name string
	Range
}

// ErrPatchTable: a kernel self-patching table (.altinstructions,
// __jump_table, ...) is malformed: truncated, or pointing outside the
// image or at an instruction that its mechanism cannot patch.
var ErrPatchTable = errors.New("malformed kernel patch table")

// PatchTableError locates an ErrPatchTable error.
type PatchTableError struct {
	Table string // the input section name: ".altinstructions", "__jump_table", ...
	Index int    // entry index, -1 for the table as a whole
	Msg   string
}

func (e *PatchTableError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("%s: %s", e.Table, e.Msg)
	}
	return fmt.Sprintf("%s entry %d: %s", e.Table, e.Index, e.Msg)
}

// Is makes errors.Is(err, ErrPatchTable) true.
func (e *PatchTableError) Is(target error) bool { return target == ErrPatchTable }

// patchTable says where a table is: its own output section in vmlinux
// (.altinstructions), or, for those the linker script merges into
// .rodata, .data or .init.data (__jump_table, .static_call_sites,
// __mcount_loc), only the linker symbols around it in System.map.
type patchTable struct {
	section     string
	start, stop string
	entSize     uint64
}

// Entry sizes are those of the 6.1 structs named.
var (
	// struct alt_instr {s32 instr_offset, repl_offset; u16 cpuid; u8
	// instrlen, replacementlen;} __packed (asm/alternative.h).
	tabAlternatives = patchTable{".altinstructions", "__alt_instructions", "__alt_instructions_end", 12}
	// s32 self-relative offsets (asm/alternative.h apply_retpolines,
	// apply_returns, apply_ibt_endbr; written by objtool).
	tabRetpolines = patchTable{".retpoline_sites", "__retpoline_sites", "__retpoline_sites_end", 4}
	tabReturns    = patchTable{".return_sites", "__return_sites", "__return_sites_end", 4}
	tabEndbrSeal  = patchTable{".ibt_endbr_seal", "__ibt_endbr_seal", "__ibt_endbr_seal_end", 4}
	// struct paravirt_patch_site {u8 *instr; u8 type; u8 len;}: 16 bytes
	// with the tail padding (_paravirt_alt fills it with a .short clobber
	// and re-aligns to 8; asm/paravirt_types.h).
	tabParavirt = patchTable{".parainstructions", "__parainstructions", "__parainstructions_end", 16}
	// s32 self-relative offsets of lock prefixes (LOCK_PREFIX_HERE,
	// asm/alternative.h); the section is padded to a page with zeros.
	tabSMPLocks = patchTable{".smp_locks", "__smp_locks", "__smp_locks_end", 4}
	// struct static_call_site {s32 addr; s32 key;}, key's low bits
	// STATIC_CALL_SITE_TAIL|INIT (linux/static_call_types.h).
	tabStaticCalls = patchTable{".static_call_sites", "__start_static_call_sites", "__stop_static_call_sites", 8}
	// struct jump_entry {s32 code; s32 target; long key;}, all relative
	// (CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE), key's low 2 bits flags
	// (linux/jump_label.h).
	tabJumpTable = patchTable{"__jump_table", "__start___jump_table", "__stop___jump_table", 16}
	// unsigned long absolute addresses (MCOUNT_REC,
	// asm-generic/vmlinux.lds.h).
	tabMcount = patchTable{"__mcount_loc", "__start_mcount_loc", "__stop_mcount_loc", 8}
	// struct exception_table_entry {int insn, fixup, data;}
	// (asm/extable.h).
	tabExTable = patchTable{"__ex_table", "__start___ex_table", "__stop___ex_table", 12}
)

// discardedText are the executable sections between __init_begin and
// __init_end, which free_initmem gives back after boot.
// .altinstr_replacement is never executed where it lies, but is freed too.
var discardedText = []string{".init.text", ".altinstr_aux", ".altinstr_replacement", ".exit.text"}

// ReadPatchSites reads the kernel's self-patching tables from the image.
// A table lives in the ELF section of its name or, when there is none,
// between its linker symbols in syms; a table found in neither is empty
// (the kernel was built without the feature). syms may be nil: then only
// section-held tables are read, trampolines are not found and keys are not
// named. Errors wrap ErrPatchTable (a *PatchTableError).
func ReadPatchSites(img *kimage.Image, syms *SymbolTable) (*PatchSites, error) {
	r := &siteReader{img: img}
	if syms != nil {
		r.syms = syms.Slid(0)
	}
	// One allocation: growing a slice of 120k sites by appends copied
	// ~40 MB on the stock kernel. Errors are the steps' to report.
	n := 1024 // trampolines and slack
	for _, t := range []patchTable{tabAlternatives, tabRetpolines, tabReturns, tabEndbrSeal,
		tabParavirt, tabSMPLocks, tabStaticCalls, tabJumpTable, tabMcount} {
		if _, data, ok, err := r.table(t); ok && err == nil {
			n += len(data) / int(t.entSize)
		}
	}
	r.sites = make([]PatchSite, 0, n)
	steps := []func() error{
		r.alternatives,
		func() error { return r.offsets(tabRetpolines, Retpoline) },
		func() error { return r.offsets(tabReturns, ReturnThunk) },
		func() error { return r.offsets(tabEndbrSeal, EndbrSeal) },
		r.paravirt,
		r.smpLocks,
		r.staticCalls,
		r.trampolines,
		r.jumpTable,
		r.mcount,
		r.exTable,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	p := &PatchSites{sites: sortSites(r.sites), fixups: r.fixups, entries: r.entries}
	slices.Sort(p.entries)
	for _, s := range p.sites {
		p.maxLen = max(p.maxLen, s.Len)
		p.counts[s.Class]++
	}
	slices.Sort(p.fixups)
	for _, name := range discardedText {
		if addr, size, ok := img.SectionHeader(name); ok && size > 0 && addr+size > addr {
			p.discarded = append(p.discarded, namedRange{name, Range{addr, addr + size}})
		} else if name == ".init.text" && r.syms != nil {
			if rg := r.syms.InitText(); rg.End > rg.Start {
				p.discarded = append(p.discarded, namedRange{name, rg})
			}
		}
	}
	return p, nil
}

// sortSites orders sites by address, then class, then table order. It
// sorts 16-byte keys and permutes once: sorting the 56-byte sites
// themselves was most of ReadPatchSites' time on the stock kernel.
func sortSites(sites []PatchSite) []PatchSite {
	keys := make([][2]uint64, len(sites))
	for i, s := range sites {
		keys[i] = [2]uint64{s.Addr, uint64(s.Class)<<32 | uint64(i)}
	}
	slices.SortFunc(keys, func(a, b [2]uint64) int {
		if c := cmp.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return cmp.Compare(a[1], b[1])
	})
	out := make([]PatchSite, len(sites))
	for i, k := range keys {
		out[i] = sites[uint32(k[1])]
	}
	return out
}

// Overlapping returns the sites that intersect [addr, addr+n), in address
// order; nil when none does.
func (p *PatchSites) Overlapping(addr, n uint64) []PatchSite {
	if n == 0 || len(p.sites) == 0 {
		return nil
	}
	end := addr + n
	if end < addr {
		end = ^uint64(0)
	}
	// A site overlapping addr starts after addr-maxLen.
	i := 0
	if addr > p.maxLen {
		from := addr - p.maxLen
		i = sort.Search(len(p.sites), func(i int) bool { return p.sites[i].Addr > from })
	}
	var out []PatchSite
	for ; i < len(p.sites) && p.sites[i].Addr < end; i++ {
		if p.sites[i].End() > addr {
			out = append(out, p.sites[i])
		}
	}
	return out
}

// Count is the number of sites of a class.
func (p *PatchSites) Count(c PatchClass) int {
	if c <= 0 || c >= numPatchClasses {
		return 0
	}
	return p.counts[c]
}

// Len is the number of sites.
func (p *PatchSites) Len() int { return len(p.sites) }

// All yields every site in address order.
func (p *PatchSites) All() iter.Seq[PatchSite] {
	return func(yield func(PatchSite) bool) {
		for _, s := range p.sites {
			if !yield(s) {
				return
			}
		}
	}
}

// HasFixup reports whether the instruction at addr has an exception-table
// entry: it may fault by design (a user access, an rdmsr that may not
// exist), and the kernel's fault handler resumes at its fixup, which is
// looked up by the faulting rip, so it must fault at its own address.
func (p *PatchSites) HasFixup(addr uint64) bool {
	_, ok := slices.BinarySearch(p.fixups, addr)
	return ok
}

// Entered reports whether the kernel's tables send control into (addr,
// addr+n) other than through addr: an exception fixup or a jump label's
// target lands there.
func (p *PatchSites) Entered(addr, n uint64) bool {
	i, _ := slices.BinarySearch(p.entries, addr+1)
	return i < len(p.entries) && p.entries[i] < addr+n
}

// Discarded reports whether addr is in text the kernel frees after boot
// (.init.text, .exit.text, ...), naming the section; a probe there can
// only fire during boot, and its int3 must not outlive the memory.
func (p *PatchSites) Discarded(addr uint64) (string, bool) {
	for _, d := range p.discarded {
		if d.Contains(addr) {
			return d.name, true
		}
	}
	return "", false
}

// siteReader accumulates what ReadPatchSites finds.
type siteReader struct {
	img     *kimage.Image
	syms    *SymbolTable // unslid, or nil
	sites   []PatchSite
	fixups  []uint64
	entries []uint64
	keys    map[uint64]string // keyName's cache
}

// table returns a table's link-time address and bytes; ok is false when
// the image and map have no such table.
func (r *siteReader) table(t patchTable) (addr uint64, data []byte, ok bool, err error) {
	tabErr := func(format string, args ...any) error {
		return &PatchTableError{Table: t.section, Index: -1, Msg: fmt.Sprintf(format, args...)}
	}
	if addr, size, ok := r.img.SectionHeader(t.section); ok {
		data, err := r.img.Section(t.section)
		if err != nil {
			return 0, nil, false, tabErr("section has no file contents")
		}
		if uint64(len(data)) != size {
			return 0, nil, false, tabErr("section holds %d bytes, its header says %d", len(data), size)
		}
		return addr, data, true, r.whole(t, data)
	}
	if r.syms == nil {
		return 0, nil, false, nil
	}
	start, ok1 := r.symbol(t.start)
	stop, ok2 := r.symbol(t.stop)
	switch {
	case !ok1 && !ok2:
		return 0, nil, false, nil
	case !ok1 || !ok2:
		return 0, nil, false, tabErr("System.map has only one of %s and %s", t.start, t.stop)
	case stop < start:
		return 0, nil, false, tabErr("%s %#x is below %s %#x", t.stop, stop, t.start, start)
	}
	if stop == start {
		return start, nil, true, nil
	}
	data, ok = r.img.ReadVirt(start, int(min(stop-start, 1<<40)))
	if !ok {
		return 0, nil, false, tabErr("[%s %#x, %s %#x) is not in the image's loaded segments", t.start, start, t.stop, stop)
	}
	return start, data, true, r.whole(t, data)
}

// symbol returns the address of the one symbol called name. It does not
// use Lookup, whose error for a missing name searches for similar ones.
func (r *siteReader) symbol(name string) (uint64, bool) {
	if idx := r.syms.named(name); len(idx) == 1 {
		return r.syms.syms[idx[0]].Addr, true
	}
	return 0, false
}

// whole refuses a table that ends inside an entry.
func (r *siteReader) whole(t patchTable, data []byte) error {
	if n := uint64(len(data)); n%t.entSize != 0 {
		return &PatchTableError{Table: t.section, Index: int(n / t.entSize),
			Msg: fmt.Sprintf("truncated: %d bytes is not a whole number of %d-byte entries", n, t.entSize)}
	}
	return nil
}

// each calls f for every entry of a table with the entry's link-time
// address and bytes.
func (r *siteReader) each(t patchTable, f func(i int, va uint64, e []byte) error) error {
	base, data, ok, err := r.table(t)
	if err != nil || !ok {
		return err
	}
	for i := 0; uint64(len(data)) >= t.entSize; i++ {
		if err := f(i, base+uint64(i)*t.entSize, data[:t.entSize]); err != nil {
			return err
		}
		data = data[t.entSize:]
	}
	return nil
}

func entryErr(t patchTable, i int, format string, args ...any) error {
	return &PatchTableError{Table: t.section, Index: i, Msg: fmt.Sprintf(format, args...)}
}

// rel resolves the s32 self-relative field at byte off of the entry at va.
func rel(va uint64, e []byte, off int) uint64 {
	return va + uint64(off) + uint64(int64(int32(binary.LittleEndian.Uint32(e[off:]))))
}

// add records a site after checking that the image holds its bytes.
func (r *siteReader) add(t patchTable, i int, s PatchSite) error {
	if _, ok := r.img.ReadVirt(s.Addr, int(s.Len)); !ok || s.End() < s.Addr {
		return entryErr(t, i, "%s site [%#x, +%d) is not in the image's loaded segments", s.Class, s.Addr, s.Len)
	}
	r.sites = append(r.sites, s)
	return nil
}

// insn decodes the instruction at a site.
func (r *siteReader) insn(t patchTable, i int, addr uint64) (length int, op x86asm.Op, err error) {
	code := r.code(addr)
	length, op, err = decodeInsn(code)
	if err != nil {
		return 0, 0, entryErr(t, i, "instruction at %#x (% x): %v", addr, code[:min(len(code), 8)], err)
	}
	return length, op, nil
}

// code returns up to 15 bytes (an instruction's maximum) from addr, as
// many as its segment holds.
func (r *siteReader) code(addr uint64) []byte {
	for _, s := range r.img.Segments {
		if addr >= s.Vaddr && addr-s.Vaddr < uint64(len(s.Data)) {
			off := addr - s.Vaddr
			return s.Data[off:min(off+15, uint64(len(s.Data)))]
		}
	}
	return nil
}

// decodeInsn returns the length and opcode of the instruction at the
// start of code.
func decodeInsn(code []byte) (int, x86asm.Op, error) {
	switch {
	case len(code) >= 5 && code[0] == 0xe8:
		return 5, x86asm.CALL, nil
	case len(code) >= 5 && code[0] == 0xe9:
		return 5, x86asm.JMP, nil
	}
	inst, err := x86dec.Decode(code)
	if err != nil {
		return 0, 0, err
	}
	return inst.Len, inst.Op, nil
}

func (r *siteReader) alternatives() error {
	t := tabAlternatives
	return r.each(t, func(i int, va uint64, e []byte) error {
		n, rn := uint64(e[10]), int(e[11]) // instrlen, replacementlen
		if n == 0 {
			return nil // nothing to replace
		}
		repl, ok := r.img.ReadVirt(rel(va, e, 4), rn)
		if !ok || uint64(rn) > n {
			return entryErr(t, i, "replacement of %d bytes at %#x for a %d-byte site is not in the image", rn, rel(va, e, 4), n)
		}
		return r.add(t, i, PatchSite{Class: Alternative, Addr: rel(va, e, 0), Len: n, Repl: repl})
	})
}

// offsets reads an s32 array of instruction sites.
func (r *siteReader) offsets(t patchTable, c PatchClass) error {
	return r.each(t, func(i int, va uint64, e []byte) error {
		addr := rel(va, e, 0)
		n, _, err := r.insn(t, i, addr)
		if err != nil {
			return err
		}
		return r.add(t, i, PatchSite{Class: c, Addr: addr, Len: uint64(n)})
	})
}

func (r *siteReader) paravirt() error {
	t := tabParavirt
	return r.each(t, func(i int, va uint64, e []byte) error {
		n := uint64(e[9]) // len
		if n == 0 {
			return nil
		}
		return r.add(t, i, PatchSite{Class: Paravirt, Addr: binary.LittleEndian.Uint64(e), Len: n})
	})
}

func (r *siteReader) smpLocks() error {
	t := tabSMPLocks
	return r.each(t, func(i int, va uint64, e []byte) error {
		if binary.LittleEndian.Uint32(e) == 0 {
			return nil // page padding; alternatives_smp_lock skips it too
		}
		return r.add(t, i, PatchSite{Class: SMPLock, Addr: rel(va, e, 0), Len: 1})
	})
}

func (r *siteReader) staticCalls() error {
	t := tabStaticCalls
	return r.each(t, func(i int, va uint64, e []byte) error {
		addr := rel(va, e, 0)
		n, _, err := r.insn(t, i, addr)
		if err != nil {
			return err
		}
		key := rel(va, e, 4) &^ 3 // STATIC_CALL_SITE_FLAGS
		return r.add(t, i, PatchSite{Class: StaticCall, Addr: addr, Len: uint64(n), Key: key, KeyName: r.keyName(key)})
	})
}

// trampolineSig follows a static call trampoline's 5-byte jmp (or ret;
// int3; nop...): ud1 %esp, %ecx, checked by __static_call_validate
// (asm/static_call.h).
var trampolineSig = []byte{0x0f, 0xb9, 0xcc}

// trampolines finds the __SCT__* symbols. The first 5 bytes are rewritten;
// with the signature after them the site is 8 bytes.
func (r *siteReader) trampolines() error {
	if r.syms == nil {
		return nil
	}
	t := patchTable{section: ".static_call.text"}
	for _, s := range r.syms.syms {
		name, ok := strings.CutPrefix(s.Name, "__SCT__")
		if !ok || !s.IsText() {
			continue
		}
		site := PatchSite{Class: StaticCallTrampoline, Addr: s.Addr, Len: 5}
		if code := r.code(s.Addr); len(code) >= 8 && [3]byte(code[5:]) == [3]byte(trampolineSig) {
			site.Len = 8
		}
		if key, ok := r.symbol("__SCK__" + name); ok {
			site.Key, site.KeyName = key, "__SCK__"+name
		}
		if err := r.add(t, -1, site); err != nil {
			return entryErr(t, -1, "trampoline %s at %#x is not in the image's loaded segments", s.Name, s.Addr)
		}
	}
	return nil
}

func (r *siteReader) jumpTable() error {
	t := tabJumpTable
	return r.each(t, func(i int, va uint64, e []byte) error {
		addr := rel(va, e, 0)
		r.entries = append(r.entries, rel(va, e, 4)) // where the enabled jump goes
		n, op, err := r.insn(t, i, addr)
		if err != nil {
			return err
		}
		// arch_jump_entry_size: a jmp8/jmp32 or a 2/5-byte nop.
		if (n != 2 && n != 5) || (op != x86asm.JMP && op != x86asm.NOP) {
			return entryErr(t, i, "code at %#x is a %d-byte %v, not a 2- or 5-byte jmp or nop", addr, n, op)
		}
		key := (va + 8 + binary.LittleEndian.Uint64(e[8:])) &^ 3 // JUMP_TYPE_MASK
		return r.add(t, i, PatchSite{Class: JumpLabel, Addr: addr, Len: uint64(n), Key: key, KeyName: r.keyName(key)})
	})
}

func (r *siteReader) mcount() error {
	t := tabMcount
	return r.each(t, func(i int, va uint64, e []byte) error {
		addr := binary.LittleEndian.Uint64(e)
		if addr == 0 {
			return nil // alignment padding; ftrace_process_locs skips it
		}
		n, op, err := r.insn(t, i, addr)
		if err != nil {
			return err
		}
		if n != 5 || (op != x86asm.CALL && op != x86asm.NOP) {
			return entryErr(t, i, "ftrace site at %#x is a %d-byte %v, not a 5-byte call or nop", addr, n, op)
		}
		return r.add(t, i, PatchSite{Class: Mcount, Addr: addr, Len: 5, Call: op == x86asm.CALL})
	})
}

func (r *siteReader) exTable() error {
	return r.each(tabExTable, func(i int, va uint64, e []byte) error {
		r.fixups = append(r.fixups, rel(va, e, 0))
		r.entries = append(r.entries, rel(va, e, 4))
		return nil
	})
}

// keyName names a key address as "sym" or "sym+0x8" (a static_key inside
// a struct tracepoint), "" when no data symbol holds it. Sites share
// keys (about 2.5 per key on the stock kernel), so names are cached.
func (r *siteReader) keyName(addr uint64) string {
	if r.syms == nil {
		return ""
	}
	if name, ok := r.keys[addr]; ok {
		return name
	}
	name := dataSymbolName(r.syms.syms, addr)
	if r.keys == nil {
		r.keys = make(map[uint64]string)
	}
	r.keys[addr] = name
	return name
}

// dataSymbolName finds the sliding non-text symbol holding addr in syms
// (sorted by address), preferring among aliases as SymbolAt does.
// SymbolAt itself only knows text.
func dataSymbolName(syms []Symbol, addr uint64) string {
	i, _ := slices.BinarySearchFunc(syms, addr+1, func(s Symbol, a uint64) int { return cmp.Compare(s.Addr, a) })
	best := -1
	for i--; i >= 0; i-- {
		s := syms[i]
		if best >= 0 && s.Addr != syms[best].Addr {
			break
		}
		if !s.Slides() || s.IsText() {
			continue
		}
		if best < 0 || aliasRank(s) < aliasRank(syms[best]) {
			best = i
		}
	}
	if best < 0 {
		return ""
	}
	s := syms[best]
	switch off := addr - s.Addr; {
	case off == 0:
		return s.Name
	case off < s.Size:
		return fmt.Sprintf("%s+%#x", s.Name, off)
	}
	return ""
}

// PatchSites returns the image's patch sites (ReadPatchSites with the
// kernel's symbols), read once.
func (k *Kernel) PatchSites() (*PatchSites, error) {
	k.patchOnce.Do(func() {
		k.patch, k.patchErr = ReadPatchSites(k.Image, k.Symbols)
	})
	return k.patch, k.patchErr
}
