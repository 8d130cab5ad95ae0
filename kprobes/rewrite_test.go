package kprobes

import (
	"errors"
	"testing"
)

// TestRecheck: the guest rewrites probed text (as alternatives, ftrace or
// text_poke do) and the engine follows, re-arming on the new instruction
// or retiring the probe, never running or restoring the stale copy.
func TestRecheck(t *testing.T) {
	page := func(va uint64) []uint64 { return []uint64{(textGPA + va - textVA) &^ (pageSize - 1)} }
	guestWrite := func(e *env, va uint64, b ...byte) { copy(e.mem.b[textGPA+va-textVA:], b) }

	t.Run("int3 overwritten", func(t *testing.T) {
		e := newEnv(t)
		// mov $1,%eax; ret — the guest then makes the mov a mov $2.
		f := e.fn("f", 0xb8, 1, 0, 0, 0, 0xc3)
		p := &Kprobe{Symbol: "f"}
		if err := e.m.Register(p); err != nil {
			t.Fatal(err)
		}
		if got := e.m.Recheck(page(f)); len(got) != 0 {
			t.Fatalf("unchanged text reported: %+v", got)
		}
		guestWrite(e, f, 0xb8, 2, 0, 0, 0) // over the int3, too
		got := e.m.Recheck(page(f))
		if len(got) != 1 || !got[0].Rearmed || got[0].Owners[0] != p {
			t.Fatalf("Recheck = %+v", got)
		}
		if e.mem.b[textGPA+f-textVA] != opInt3 {
			t.Fatal("int3 not written back")
		}
		e.call(f)
		if e.cpu.regs.RAX != 2 || p.Hits() != 1 {
			t.Fatalf("rax %#x hits %d: the stale instruction ran", e.cpu.regs.RAX, p.Hits())
		}
		if err := e.m.Unregister(p); err != nil {
			t.Fatal(err)
		}
		if e.mem.b[textGPA+f-textVA] != 0xb8 || e.mem.b[textGPA+f-textVA+1] != 2 {
			t.Fatal("text not the guest's after removal")
		}
	})

	t.Run("tail rewritten under the int3", func(t *testing.T) {
		e := newEnv(t)
		f := e.fn("f", 0xb8, 1, 0, 0, 0, 0xc3)
		p := &Kprobe{Symbol: "f"}
		if err := e.m.Register(p); err != nil {
			t.Fatal(err)
		}
		guestWrite(e, f+1, 3)
		if got := e.m.Recheck(page(f)); len(got) != 1 || !got[0].Rearmed {
			t.Fatalf("Recheck = %+v", got)
		}
		e.call(f)
		if e.cpu.regs.RAX != 3 {
			t.Fatalf("rax %#x: the stale instruction ran", e.cpu.regs.RAX)
		}
	})

	t.Run("rewritten into an unprobeable instruction", func(t *testing.T) {
		e := newEnv(t)
		f := e.fn("f", 0x0f, 0x1f, 0x44, 0, 0, 0xc3) // nopl
		p := &Kprobe{Symbol: "f"}
		if err := e.m.Register(p); err != nil {
			t.Fatal(err)
		}
		guestWrite(e, f+1, 0x0b) // the int3 stays, the rest becomes ud2-like: cc 0b
		guestWrite(e, f, 0x0f)   // then the guest writes its first byte: 0f 0b = ud2
		got := e.m.Recheck(page(f))
		if len(got) != 1 || got[0].Rearmed || !errors.Is(got[0].Err, ErrUnsafeInstruction) {
			t.Fatalf("Recheck = %+v", got)
		}
		if !errors.Is(e.m.Unregister(p), ErrNotRegistered) {
			t.Fatal("a retired probe is still registered")
		}
		if e.mem.b[textGPA+f-textVA] != 0x0f || e.mem.b[textGPA+f-textVA+1] != 0x0b {
			t.Fatal("the guest's bytes were not left as it wrote them")
		}
	})

	t.Run("other page", func(t *testing.T) {
		e := newEnv(t)
		f := e.fn("f", 0xb8, 1, 0, 0, 0, 0xc3)
		if err := e.m.Register(&Kprobe{Symbol: "f"}); err != nil {
			t.Fatal(err)
		}
		guestWrite(e, f, 0x90)
		if got := e.m.Recheck([]uint64{0}); len(got) != 0 {
			t.Fatalf("a write elsewhere was acted on: %+v", got)
		}
	})
}
