package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/hvprobe/hvprobe/kimage"
)

// ErrNoORC: the kernel image carries no ORC unwind tables (built without
// CONFIG_UNWINDER_ORC).
var ErrNoORC = errors.New("kernel has no ORC unwind tables")

// ORCReg is an ORC base register (ORC_REG_* in orc_types.h).
type ORCReg uint8

// ORC base registers, numbered as the kernel numbers them.
const (
	ORCRegUndefined  ORCReg = 0 // sp: no CFA known; bp: bp unchanged in this frame
	ORCRegPrevSP     ORCReg = 1 // bp is saved at CFA + bp_offset
	ORCRegDX         ORCReg = 2
	ORCRegDI         ORCReg = 3
	ORCRegBP         ORCReg = 4
	ORCRegSP         ORCReg = 5
	ORCRegR10        ORCReg = 6
	ORCRegR13        ORCReg = 7
	ORCRegBPIndirect ORCReg = 8 // CFA = *(bp + sp_offset)
	ORCRegSPIndirect ORCReg = 9 // CFA = *sp + sp_offset
)

var orcRegNames = [...]string{"undef", "prevsp", "dx", "di", "bp", "sp", "r10", "r13", "bp(ind)", "sp(ind)"}

func (r ORCReg) String() string {
	if int(r) < len(orcRegNames) {
		return orcRegNames[r]
	}
	return "ORCReg(" + strconv.Itoa(int(r)) + ")"
}

// ORCType says how to find the caller's ip and sp from the CFA. The
// values are this package's: the kernel renumbered them in 6.4, and
// before 6.4 "undefined" and "end of stack" were an undefined sp_reg with
// the end bit clear or set.
type ORCType uint8

const (
	// ORCUndefined: no unwind information (a gap, or code objtool could
	// not follow); unwinding must stop with an error.
	ORCUndefined ORCType = iota
	// ORCEndOfStack: the outermost frame (kernel thread or entry code
	// before pt_regs exist); unwinding is complete.
	ORCEndOfStack
	// ORCCall: a normal frame; the return address is at CFA-8 and the
	// caller's sp is the CFA.
	ORCCall
	// ORCRegs: the CFA is a full struct pt_regs.
	ORCRegs
	// ORCRegsPartial: the CFA is the hardware iret frame (pt_regs from
	// ip on); the general registers are not saved.
	ORCRegsPartial
)

var orcTypeNames = [...]string{"undefined", "end", "call", "regs", "regs (partial)"}

func (t ORCType) String() string {
	if int(t) < len(orcTypeNames) {
		return orcTypeNames[t]
	}
	return "ORCType(" + strconv.Itoa(int(t)) + ")"
}

// ORCEntry is one decoded struct orc_entry: the rule for the code from
// its address up to the next entry's.
type ORCEntry struct {
	SPOffset int16
	BPOffset int16
	SPReg    ORCReg
	BPReg    ORCReg
	Type     ORCType
	// Signal (6.3+; implied by the regs types before) says the frame was
	// interrupted rather than called: its ip is not a return address, so
	// the next lookup uses ip itself, not ip-1.
	Signal bool
}

// ORC is the kernel's ORC unwind table (.orc_unwind_ip and .orc_unwind),
// sorted by address as the kernel's build sorts it.
//
// Invariant: the table is immutable once read; Slid returns a view that
// shares its storage and takes and returns runtime addresses.
type ORC struct {
	ips     []uint64 // link-time, ascending
	entries []ORCEntry
	slide   uint64
	// Layout names the struct orc_entry bit layout the table was decoded
	// with ("6.1", "6.3", "6.4").
	Layout string
}

const orcEntrySize = 6

// orcLayout is where the bitfield after sp_offset and bp_offset keeps
// each field. Linux 6.1-6.2: sp_reg:4 bp_reg:4 type:2 end:1; 6.3 added
// signal:1 before end; 6.4 made type 3 bits with its own undefined and
// end-of-stack values, dropped end, and added .orc_header.
type orcLayout struct {
	name      string
	typeBits  uint
	signalBit int // -1: none
	endBit    int // -1: none
}

var (
	orcLayout61 = orcLayout{name: "6.1", typeBits: 2, signalBit: -1, endBit: 10}
	orcLayout63 = orcLayout{name: "6.3", typeBits: 2, signalBit: 10, endBit: 11}
	orcLayout64 = orcLayout{name: "6.4", typeBits: 3, signalBit: 11, endBit: -1}
)

// decode normalizes one raw entry to ORCEntry.
func (l orcLayout) decode(b []byte) ORCEntry {
	bits := binary.LittleEndian.Uint16(b[4:])
	e := ORCEntry{
		SPOffset: int16(binary.LittleEndian.Uint16(b[0:])),
		BPOffset: int16(binary.LittleEndian.Uint16(b[2:])),
		SPReg:    ORCReg(bits & 0xf),
		BPReg:    ORCReg(bits >> 4 & 0xf),
	}
	typ := bits >> 8 & (1<<l.typeBits - 1)
	if l.signalBit >= 0 {
		e.Signal = bits>>l.signalBit&1 != 0
	}
	if l.endBit < 0 {
		// 6.4+: ORC_TYPE_UNDEFINED 0, END_OF_STACK 1, CALL 2, REGS 3,
		// REGS_PARTIAL 4: this package's numbering.
		e.Type = ORCType(typ)
		if e.Type > ORCRegsPartial {
			e.Type = ORCUndefined
		}
		return e
	}
	end := bits>>l.endBit&1 != 0
	switch {
	case e.SPReg == ORCRegUndefined && end:
		e.Type = ORCEndOfStack
	case e.SPReg == ORCRegUndefined:
		e.Type = ORCUndefined
	case typ == 0:
		e.Type = ORCCall
	case typ == 1:
		e.Type, e.Signal = ORCRegs, true
	case typ == 2:
		e.Type, e.Signal = ORCRegsPartial, true
	default:
		e.Type = ORCUndefined
	}
	return e
}

// chooseORCLayout picks the entry layout: .orc_header exists exactly from
// 6.4 on; without it the release decides between 6.1 and 6.3. A release
// that cannot be parsed is taken as older than 6.3.
func chooseORCLayout(img *kimage.Image) orcLayout {
	if _, _, ok := img.SectionHeader(".orc_header"); ok {
		return orcLayout64
	}
	major, minor, ok := releaseNumbers(img.Version)
	switch {
	case ok && (major > 6 || major == 6 && minor >= 4):
		return orcLayout64
	case ok && major == 6 && minor == 3:
		return orcLayout63
	}
	return orcLayout61
}

// releaseNumbers parses "6.1.0-28-cloud-amd64" into 6, 1.
func releaseNumbers(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	end := strings.IndexFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	if end >= 0 {
		parts[1] = parts[1][:end]
	}
	var err1, err2 error
	major, err1 = strconv.Atoi(parts[0])
	minor, err2 = strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}

// ReadORC reads the image's ORC tables. The error wraps ErrNoORC when the
// image has none and ErrPatchTable when they are malformed (counts that
// differ, a truncated entry, addresses out of order). .orc_lookup, the
// kernel's own speed-up index, is not needed: lookups binary-search.
func ReadORC(img *kimage.Image) (*ORC, error) {
	ipAddr, _, ok := img.SectionHeader(".orc_unwind_ip")
	if !ok {
		return nil, fmt.Errorf("reading .orc_unwind_ip: %w", ErrNoORC)
	}
	ipData, err := img.Section(".orc_unwind_ip")
	if err != nil {
		return nil, fmt.Errorf("reading .orc_unwind_ip: %w", err)
	}
	entData, err := img.Section(".orc_unwind")
	if err != nil {
		return nil, fmt.Errorf("reading .orc_unwind: %w", errors.Join(ErrNoORC, err))
	}
	return parseORC(ipAddr, ipData, entData, chooseORCLayout(img))
}

func parseORC(ipAddr uint64, ipData, entData []byte, l orcLayout) (*ORC, error) {
	bad := func(i int, format string, args ...any) error {
		return &PatchTableError{Table: ".orc_unwind_ip", Index: i, Msg: fmt.Sprintf(format, args...)}
	}
	switch n := len(ipData) / 4; {
	case len(ipData)%4 != 0:
		return nil, bad(n, "truncated: %d bytes is not a whole number of 4-byte entries", len(ipData))
	case len(entData) != n*orcEntrySize:
		return nil, bad(-1, "%d addresses but .orc_unwind holds %d bytes, not %d", n, len(entData), n*orcEntrySize)
	}
	o := &ORC{ips: make([]uint64, len(ipData)/4), entries: make([]ORCEntry, len(ipData)/4), Layout: l.name}
	for i := range o.ips {
		at := ipAddr + 4*uint64(i)
		o.ips[i] = at + uint64(int64(int32(binary.LittleEndian.Uint32(ipData[4*i:]))))
		if i > 0 && o.ips[i] < o.ips[i-1] {
			return nil, bad(i, "address %#x below the previous entry's %#x", o.ips[i], o.ips[i-1])
		}
		o.entries[i] = l.decode(entData[orcEntrySize*i:])
	}
	return o, nil
}

// NewORC builds a table from decoded entries at link-time addresses, for
// synthetic tables; ips must ascend and match entries one to one.
func NewORC(ips []uint64, entries []ORCEntry) (*ORC, error) {
	if len(ips) != len(entries) {
		return nil, &PatchTableError{Table: ".orc_unwind", Index: -1,
			Msg: fmt.Sprintf("%d addresses for %d entries", len(ips), len(entries))}
	}
	for i := 1; i < len(ips); i++ {
		if ips[i] < ips[i-1] {
			return nil, &PatchTableError{Table: ".orc_unwind_ip", Index: i,
				Msg: fmt.Sprintf("address %#x below the previous entry's %#x", ips[i], ips[i-1])}
		}
	}
	return &ORC{ips: ips, entries: entries, Layout: "synthetic"}, nil
}

// Len is the number of entries.
func (o *ORC) Len() int { return len(o.ips) }

// At returns entry i and the address it starts at.
func (o *ORC) At(i int) (addr uint64, e ORCEntry) { return o.ips[i] + o.slide, o.entries[i] }

// Slid returns a view in which addresses are runtime addresses of a
// kernel slid by slide (KASLR); it shares o's storage.
func (o *ORC) Slid(slide uint64) *ORC {
	v := *o
	v.slide = slide
	return &v
}

// Lookup returns the rule for the instruction at ip: the entry with the
// largest address not above ip. ok is false below the first entry. The
// caller looks up a return address minus one (the call, not what
// follows it), except for the interrupted ip of a signal frame.
func (o *ORC) Lookup(ip uint64) (ORCEntry, bool) {
	ip -= o.slide
	i := sort.Search(len(o.ips), func(i int) bool { return o.ips[i] > ip })
	if i == 0 {
		return ORCEntry{}, false
	}
	return o.entries[i-1], true
}

// ORC reads the image's ORC table (ReadORC) at link-time addresses; use
// Slid for a KASLR guest. Each call parses the sections again (a few
// milliseconds), so callers keep the result.
func (k *Kernel) ORC() (*ORC, error) { return ReadORC(k.Image) }
