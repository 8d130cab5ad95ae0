package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/arch/x86/x86asm"

	kguest "github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/internal/x86dec"
)

// hvprobeBinary is the CLI `make static` builds.
func hvprobeBinary(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "out", "hvprobe-static"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%v (make static builds it)", err)
	}
	return p
}

func openStock(t *testing.T) (*kguest.Kernel, string, string) {
	t.Helper()
	dir := filepath.Join(imagesDir(), "stock")
	img, smap := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "System.map")
	k, err := kguest.OpenKernel(img, smap)
	if err != nil {
		t.Fatalf("opening the stock kernel (make images-stock): %v", err)
	}
	return k, img, smap
}

// findInsn finds the first function of k whose decoded text has an
// instruction for which want is true, decoding from the function's start.
func findInsn(k *kguest.Kernel, want func(x86asm.Inst, []byte) bool) (string, uint64, bool) {
	for s := range k.Symbols.All() {
		if !s.IsText() || s.Size == 0 || s.Size > 16<<10 {
			continue
		}
		code, ok := k.Image.ReadVirt(s.Addr, int(s.Size))
		if !ok {
			continue
		}
		for pos := 0; pos < len(code); {
			inst, err := x86dec.Decode(code[pos:])
			if err != nil {
				break
			}
			if want(inst, code[pos:pos+inst.Len]) {
				return s.Name, uint64(pos), true
			}
			pos += inst.Len
		}
	}
	return "", 0, false
}

// TestRefusedBeforeBoot gives hvprobe run a probe file of lines that can
// never be armed in Debian's stock kernel, among good ones: every bad line
// must be reported at once, with its line number and the caret under the
// part at fault, exit status 2, and no VM created.
func TestRefusedBeforeBoot(t *testing.T) {
	bin := hvprobeBinary(t) // no KVM needed: nothing may boot
	k, img, smap := openStock(t)
	sites, err := k.PatchSites()
	if err != nil {
		t.Fatal(err)
	}
	var jump, scall kguest.PatchSite
	for s := range sites.All() {
		if s.Class == kguest.JumpLabel && jump.Addr == 0 {
			jump = s
		}
		if s.Class == kguest.StaticCall && scall.Addr == 0 {
			scall = s
		}
	}
	where := func(a uint64) string {
		s, off, ok := k.Symbols.SymbolAt(a)
		if !ok {
			t.Fatalf("no symbol at %#x", a)
		}
		return fmt.Sprintf("%s+%#x", s.Name, off)
	}
	find := func(what string, f func(x86asm.Inst, []byte) bool) string {
		name, off, ok := findInsn(k, f)
		if !ok {
			t.Fatalf("no %s in the stock kernel's text", what)
		}
		return fmt.Sprintf("%s+%#x", name, off)
	}
	ud2 := find("ud2", func(i x86asm.Inst, _ []byte) bool { return i.Op == x86asm.UD2 })
	ud1 := find("ud1", func(i x86asm.Inst, _ []byte) bool { return i.Op == x86asm.UD1 })
	sysret := find("sysretq", func(i x86asm.Inst, _ []byte) bool { return i.Op == x86asm.SYSRET })
	var exitFn, dup string
	seen := map[string]int{}
	for s := range k.Symbols.All() {
		seen[s.Name]++
	}
	for s := range k.Symbols.All() {
		if sec, ok := sites.Discarded(s.Addr); ok && sec == ".exit.text" && exitFn == "" && s.IsText() && seen[s.Name] == 1 {
			exitFn = s.Name
		}
		if s.IsText() && seen[s.Name] > 1 && dup == "" && !strings.Contains(s.Name, ".") {
			dup = s.Name
		}
	}
	if exitFn == "" || dup == "" {
		t.Fatalf("no .exit.text function (%q) or duplicated name (%q) in the stock map", exitFn, dup)
	}
	lines := []string{
		"p:good1 do_one_initcall",          // 1
		"p:unknown do_one_initcal",         // 2
		"p:ambig " + dup,                   // 3
		"p:nth " + dup + ":2",              // 4: good
		"p:mid vfs_read+0x1",               // 5
		"p:data jiffies_64",                // 6
		"p:ud2 " + ud2,                     // 7
		"p:ud1 " + ud1,                     // 8
		"p:sysret " + sysret,               // 9
		"p:exit " + exitFn,                 // 10
		"p:btf do_sys_openat2 nosuchparam", // 11
		"p:jump " + where(jump.Addr),       // 12
		"p:scall " + where(scall.Addr),     // 13
		"r:rbody vfs_read+0x5",             // 14
		"p:syntax vfs_read %zz",            // 15
		"r:good2 do_one_initcall fn=$arg1:symbol ret=$retval:s32", // 16
	}
	file := filepath.Join(t.TempDir(), "bad.probes")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	cmd := exec.Command(bin, "run", "--kernel", img, "--system-map", smap, "--probes", file)
	out, err := cmd.CombinedOutput()
	took := time.Since(t0)
	t.Logf("refused in %v:\n%s", took, out)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want status 2", err)
	}
	text := string(out)
	if strings.Contains(text, "kernel placed") {
		t.Fatal("a VM was created")
	}
	want := map[int]string{
		2: "did you mean do_one_initcall", 3: "symbols named " + strconv.Quote(dup), 5: "not on an instruction boundary",
		6: "not in kernel text", 7: "ud2", 8: "ud1", 9: "changes privilege", 10: ".exit.text",
		11: "nosuchparam", 12: "jump label", 13: "static call", 14: "must be on a function entry",
		15: "invalid register",
	}
	for n, msg := range want {
		prefix := fmt.Sprintf("%s:%d: %s", file, n, lines[n-1])
		i := strings.Index(text, prefix)
		if i < 0 {
			t.Errorf("line %d (%s) not refused", n, lines[n-1])
			continue
		}
		rest := text[i:]
		if j := strings.Index(rest[1:], "hvprobe: "); j >= 0 {
			rest = rest[:j+1]
		}
		if !strings.Contains(strings.ToLower(rest), strings.ToLower(msg)) {
			t.Errorf("line %d refused without %q:\n%s", n, msg, rest)
		}
	}
	for _, n := range []int{1, 4, 16} {
		if strings.Contains(text, fmt.Sprintf("%s:%d:", file, n)) {
			t.Errorf("good line %d (%s) refused", n, lines[n-1])
		}
	}
	if got := strings.Count(text, file+":"); got != len(want) {
		t.Errorf("%d lines refused, want %d", got, len(want))
	}
	// The caret sits under the location on screen: the prefix counts.
	i := strings.Index(text, fmt.Sprintf("%s:5: ", file))
	line := text[i:]
	first, second, _ := strings.Cut(line, "\n")
	col := strings.Index(first, "vfs_read+0x1")
	if strings.Index(second, "^") != col+len("hvprobe: ") {
		t.Errorf("caret at column %d, the location at %d:\n%s\n%s", strings.Index(second, "^"), col+len("hvprobe: "), first, second)
	}
}
