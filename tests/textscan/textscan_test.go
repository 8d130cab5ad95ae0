// Package textscan walks the whole text of the project's guest kernels,
// the mini kernel and Debian's stock one, and judges a probe at every
// instruction boundary and on every alternative replacement, as the
// pre-boot check would (docs/QUIRKS.md #50). It needs the images (make
// images images-stock) and no KVM.
package textscan

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/internal/x86dec"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/session"
	"golang.org/x/arch/x86/x86asm"
)

// allowed are the instructions the engine refuses on purpose, each for
// the reason analyze states (docs/QUIRKS.md #50). Anything else refused,
// and anything undecodable, fails the scan.
var allowed = map[string]bool{
	"int": true, "int3": true, "into": true, "ud0": true, "ud1": true, "ud2": true,
	"hlt": true, "mwait": true, "mwaitx": true, "iret": true, "iretd": true, "iretq": true,
	"sysret": true, "sysexit": true, "syscall": true, "sysenter": true,
	"ljmp": true, "lcall": true, "lret": true, "mov_ss": true, "pop_ss": true,
	"vmrun": true, "skinit": true,
}

// code32 are the text symbols that are 32-bit code: a 64-bit decode of
// them is meaningless, and a probe there is refused before boot as not on
// an instruction boundary. hvprobe boots the 64-bit entry, so none of them
// runs under it.
var code32 = map[string]bool{"pvh_start_xen": true}

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

func TestScanMini(t *testing.T) {
	dir := filepath.Join(repoRoot(t), ".cache/images/mini/current")
	scan(t, filepath.Join(dir, "bzImage"), filepath.Join(dir, "System.map"))
}

func TestScanStock(t *testing.T) {
	dir := filepath.Join(repoRoot(t), ".cache/images/stock")
	scan(t, filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "System.map"))
}

type tally map[string]int

func (c tally) String() string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return c[b] - c[a] })
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, "\n  %7d  %s", c[k], k)
	}
	return sb.String()
}

func scan(t *testing.T, image, sysmap string) {
	k, err := guest.OpenKernel(image, sysmap)
	if err != nil {
		t.Fatalf("%v (make images images-stock builds them)", err)
	}
	ik, err := session.NewImageKernel(k)
	if err != nil {
		t.Fatal(err)
	}
	var boundaries, armable, deferred int
	refused, reserved, undecodable := tally{}, tally{}, tally{}
	for s := range k.Symbols.All() {
		if (s.Type != 't' && s.Type != 'T') || !k.Symbols.InText(s.Addr) || s.Size == 0 || code32[s.Name] {
			continue
		}
		// System.map has local labels too: an instruction may run on
		// past the next "symbol".
		code, ok := k.Image.ReadVirt(s.Addr, int(s.Size)+15)
		if !ok {
			if code, ok = k.Image.ReadVirt(s.Addr, int(s.Size)); !ok {
				continue // not in the image's file (bss)
			}
		}
		for at := 0; at < int(s.Size); {
			if padding(code[at:s.Size]) {
				break // int3s to the next symbol: alignment, not code
			}
			inst, err := x86dec.Decode(code[at:])
			if err != nil {
				undecodable[fmt.Sprintf("%s+%#x: % x", s.Name, at, code[at:min(at+4, len(code))])]++
				break // the sweep lost the boundaries; the next symbol resyncs
			}
			boundaries++
			va := s.Addr + uint64(at)
			at += inst.Len
			if _, err := kprobes.CheckCode(code[at-inst.Len:]); err != nil {
				refused[opName(inst)]++
				continue
			}
			switch err := ik.Reserved(va, uint64(inst.Len)); {
			case err == nil:
				armable++
			case errors.Is(err, kprobes.ErrNotYetPatched):
				deferred++
			case errors.Is(err, kprobes.ErrUndecodable), errors.Is(err, kprobes.ErrUnsafeInstruction):
				undecodable["replacement: "+err.Error()]++
			default:
				reserved[reasonClass(err)]++
			}
		}
	}
	sites, err := k.PatchSites()
	if err != nil {
		t.Fatal(err)
	}
	var alts int
	altRefused := tally{}
	for s := range sites.All() {
		if s.Class != guest.Alternative || len(s.Repl) == 0 {
			continue
		}
		alts++
		code := s.Replaced()
		if _, err := kprobes.CheckCode(code); err != nil {
			inst, derr := x86dec.Decode(code)
			name := fmt.Sprintf("% x", s.Repl[:min(4, len(s.Repl))])
			if derr == nil {
				name = opName(inst)
			}
			altRefused[name]++
		}
	}
	t.Logf("%s: %d instruction boundaries: %d armable at boot, %d armed once boot patching is over, %d reserved, %d refused, %d undecodable (a symbol's sweep stops there)",
		filepath.Base(image), boundaries, armable, deferred, sum(reserved), sum(refused), sum(undecodable))
	t.Logf("reserved (text the kernel rewrites while it runs, or discards):%v", reserved)
	t.Logf("refused instructions:%v", refused)
	t.Logf("undecodable:%v", undecodable)
	t.Logf("%d alternative replacements, refused:%v", alts, altRefused)
	for name, n := range refused {
		if !allowed[name] {
			t.Errorf("%d probe sites refused on %s, which is not a deliberate refusal", n, name)
		}
	}
	for name, n := range altRefused {
		if !allowed[name] {
			t.Errorf("%d alternative replacements refused on %s, which is not a deliberate refusal", n, name)
		}
	}
	for name, n := range undecodable {
		t.Errorf("%d sweeps stopped at undecodable bytes %s", n, name)
	}
}

func sum(c tally) int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

func padding(b []byte) bool {
	return len(b) > 0 && bytes.Count(b, []byte{0xcc}) == len(b)
}

// opName is the mnemonic, with mov/pop to %ss named apart.
func opName(inst x86asm.Inst) string {
	name := x86dec.Name(inst.Op)
	if (inst.Op == x86asm.MOV || inst.Op == x86asm.POP) && inst.Args[0] == x86asm.SS {
		name += "_ss"
	}
	return name
}

// reasonClass shortens a Reserved reason to its kind of text.
func reasonClass(err error) string {
	msg := err.Error()
	for _, c := range []string{"jump label", "static call trampoline", "static call", ".exit.text", ".init.text", "inside a"} {
		if strings.Contains(msg, c) {
			return c
		}
	}
	return msg
}
