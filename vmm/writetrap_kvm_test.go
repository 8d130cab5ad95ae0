//go:build kvm

package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runHandled runs vCPU 0 from rip on its thread until it writes tinyPort,
// passing every other exit to the VM's exit handler (as VCPU.loop does).
func runHandled(t testing.TB, vm *VM, rip uint64) {
	t.Helper()
	v := vm.vcpus[0]
	err := v.Do(func(CPU) error {
		if err := v.SetRegs(Regs{RIP: rip, RSP: 0x800, RFLAGS: 0x2}); err != nil {
			return err
		}
		return runHandledOnThread(vm, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func runHandledOnThread(vm *VM, v *VCPU) error {
	for range 100000 {
		e, err := rawRun(v)
		if errors.Is(err, unix.EINTR) {
			continue // a Do's kick
		}
		if err != nil {
			return err
		}
		if e.reason == exitIO && e.io.Port == tinyPort {
			return v.completePending()
		}
		reason, err := vm.handler.handle(v, &e)
		if e.reason == exitMMIO && e.mmio.IsWrite == 0 {
			copy(v.run.union()[8:16], e.mmio.Data[:])
		}
		if err != nil || reason != 0 {
			return fmt.Errorf("exit %d: stop %v, %v", e.reason, reason, err)
		}
	}
	return errors.New("the guest never reached its port write")
}

// Real-mode code for the write-trap tests (DS base tinyWatch).
var (
	// trapLoop: 5 times incb DS:0x100 (trapped), then movb $0x77 to
	// DS:0x800 (same page, untrapped), movw $0xbeef to DS:0x1ff0 (next
	// page, untrapped), then a read of DS:0x100 into %bl.
	trapLoop = []byte{
		0xb9, 0x05, 0x00, // mov $5, %cx
		0xfe, 0x06, 0x00, 0x01, // 1: incb 0x100   (at +3, 4 bytes)
		0xe2, 0xfa, // loop 1b
		0xc6, 0x06, 0x00, 0x08, 0x77, // movb $0x77, 0x800
		0xc7, 0x06, 0xf0, 0x1f, 0xef, 0xbe, // movw $0xbeef, 0x1ff0
		0x8a, 0x1e, 0x00, 0x01, // mov 0x100, %bl
		0xe6, tinyPort, 0xf4,
	}
	// trapSpin: incb DS:0x100 until DS:0x7000 is non-zero, then reset.
	trapSpin = []byte{
		0xfe, 0x06, 0x00, 0x01, // 1: incb 0x100
		0x80, 0x3e, 0x00, 0x70, 0x00, // cmpb $0, 0x7000
		0x74, 0xf5, // je 1b
		0xb0, 0xfe, 0xe6, 0x64, 0xf4, // reset
	}
)

// TestWriteTrapTinyGuest: N guest stores to a trapped byte give exactly N
// events with the right rip, old and new values; an untrapped byte of the
// same page and a neighbouring page are written unchanged; after removal
// the page is plain RAM again and memory is what the guest wrote.
func TestWriteTrapTinyGuest(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	m := vm.Memory()
	if err := m.WritePhys(tinyCode, trapLoop); err != nil {
		t.Fatal(err)
	}
	if err := m.WritePhys(tinyWatch+0x100, []byte{0x40}); err != nil {
		t.Fatal(err)
	}
	rec := &recordWrites{}
	vm.SetWriteHook(rec)
	id, err := vm.TrapWrites(tinyWatch+0x100, 4)
	if err != nil {
		t.Fatalf("TrapWrites: %v", err)
	}
	t.Logf("slots with the trap: %+v", vm.slots)
	runHandled(t, vm, tinyCode)
	evs := rec.take()
	if len(evs) != 5 {
		t.Fatalf("%d events, want 5: %+v", len(evs), evs)
	}
	for i, ev := range evs {
		want := WriteEvent{Trap: id, CPU: 0, RIP: tinyCode + 7, GPA: tinyWatch + 0x100, Size: 1}
		want.Old[0], want.New[0] = byte(0x40+i), byte(0x41+i)
		if ev != want {
			t.Errorf("event %d = %+v, want %+v", i, ev, want)
		}
	}
	// The untrapped byte on the trapped page costs an exit, not an event.
	if st := vm.WriteTrapStats(); st.Exits != 6 || st.Events != 5 {
		t.Errorf("stats %+v, want 6 exits, 5 events", st)
	}
	var b [2]byte
	for _, c := range []struct {
		at   uint64
		want []byte
	}{{tinyWatch + 0x100, []byte{0x45}}, {tinyWatch + 0x800, []byte{0x77}}, {tinyWatch + 0x1ff0, []byte{0xef, 0xbe}}} {
		m.ReadPhys(c.at, b[:len(c.want)])
		if !slices.Equal(b[:len(c.want)], c.want) {
			t.Errorf("RAM at %#x = % x, want % x", c.at, b[:len(c.want)], c.want)
		}
	}
	// The guest reads its trapped byte from RAM at full speed.
	var r Regs
	vm.Do(0, func(c CPU) error { r, err = c.Regs(); return err })
	if r.RBX&0xff != 0x45 {
		t.Errorf("guest read %#x from the trapped byte, want 0x45", r.RBX&0xff)
	}

	before := slices.Clone(vm.mem.b[tinyWatch : tinyWatch+2*pageSize])
	if err := vm.UntrapWrites(id); err != nil {
		t.Fatalf("UntrapWrites: %v", err)
	}
	if err := vm.UntrapWrites(id); !errors.Is(err, ErrTrapRefused) {
		t.Errorf("second UntrapWrites: %v, want ErrTrapRefused", err)
	}
	if !slices.Equal(vm.mem.b[tinyWatch:tinyWatch+2*pageSize], before) {
		t.Fatal("removing the trap changed guest memory")
	}
	if len(vm.slots) != 1 || vm.slots[0] != (memslot{id: slotLow, size: tinyMem}) {
		t.Errorf("slots after removal %+v, want the single RAM slot", vm.slots)
	}
	runHandled(t, vm, tinyCode)
	if evs := rec.take(); len(evs) != 0 {
		t.Errorf("%d events after removal", len(evs))
	}
	if st := vm.WriteTrapStats(); st.Exits != 6 {
		t.Errorf("exits after removal: %+v", st)
	}
	if got := vm.mem.b[tinyWatch+0x100]; got != 0x4a {
		t.Errorf("after removal the guest's stores give %#x, want 0x4a", got)
	}
}

// TestWriteTrapWithDirtyLog: a trap and a LogDirty range coexist; an
// overlapping one is refused; the dirty log survives a trap's add/remove.
func TestWriteTrapWithDirtyLog(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	if err := vm.LogDirty(tinyWatch+2*pageSize, tinyEnd); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.TrapWrites(tinyWatch+3*pageSize, 1); !errors.Is(err, ErrTrapRefused) {
		t.Errorf("trap inside the dirty watch: %v, want ErrTrapRefused", err)
	}
	// Phase: write the dirty page E (DS 0x6000) and the trapped byte.
	code := []byte{
		0xc6, 0x06, 0x00, 0x60, 0x01, // movb $1, 0x6000 (dirty-logged)
		0xc6, 0x06, 0x00, 0x01, 0x02, // movb $2, 0x100 (trapped)
		0xe6, tinyPort, 0xf4,
	}
	copy(vm.mem.b[tinyCode:], code)
	rec := &recordWrites{}
	vm.SetWriteHook(rec)
	id, err := vm.TrapWrites(tinyWatch+0x100, 1)
	if err != nil {
		t.Fatal(err)
	}
	runHandled(t, vm, tinyCode)
	if err := vm.UntrapWrites(id); err != nil {
		t.Fatal(err)
	}
	// The log of the write made before the untrap is still there.
	wantDirty(t, vm, "after a trap came and went", gpa(pageE))
	if evs := rec.take(); len(evs) != 1 || evs[0].New[0] != 2 {
		t.Errorf("events %+v, want one store of 2", evs)
	}
}

// TestWriteTrapWhileRunning: traps added and removed under VM.Run (every
// vCPU is paused for the memslot change), with an exact event count.
func TestWriteTrapWhileRunning(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	copy(vm.mem.b[tinyCode:], trapSpin)
	rec := &recordWrites{}
	vm.SetWriteHook(rec)
	if err := vm.vcpus[0].SetRegs(Regs{RIP: tinyCode, RSP: 0x800, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan Result, 1)
	go func() { done <- vm.Run(ctx) }()
	time.Sleep(20 * time.Millisecond)
	id, err := vm.TrapWrites(tinyWatch+0x100, 1)
	if err != nil {
		t.Fatalf("TrapWrites while running: %v", err)
	}
	for vm.WriteTrapStats().Events < 50 {
		select {
		case r := <-done:
			t.Fatalf("guest stopped: %v %v", r.Reason, r.Err)
		case <-ctx.Done():
			t.Fatal("no events")
		case <-time.After(time.Millisecond):
		}
	}
	if err := vm.UntrapWrites(id); err != nil {
		t.Fatalf("UntrapWrites while running: %v", err)
	}
	evs := rec.take()
	if uint64(len(evs)) != vm.WriteTrapStats().Events {
		t.Errorf("%d events recorded, stats say %d", len(evs), vm.WriteTrapStats().Events)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Old[0] != evs[i-1].New[0] || evs[i].New[0] != evs[i].Old[0]+1 {
			t.Fatalf("event %d: %#x -> %#x after %#x -> %#x: a store was lost or doubled", i, evs[i].Old[0], evs[i].New[0], evs[i-1].Old[0], evs[i-1].New[0])
		}
	}
	vm.mem.b[tinyWatch+0x7000] = 1
	if r := <-done; r.Reason != StopReset {
		t.Fatalf("ended with %v (%v)", r.Reason, r.Err)
	}
	t.Logf("%d events while running, exits %+v", len(evs), vm.WriteTrapStats())
}

// TestWriteTrapLongMode: 64-bit CPL 0 stores of the kinds kernel code
// makes: an 8-byte store across a page boundary (two fragments, two
// events), a rep movsb (one event per byte), a lock cmpxchg, and a store
// to an untrapped byte of a trapped page (an exit, no event).
func TestWriteTrapLongMode(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	setupLongMode(t, vm)
	const ro = 0x300000
	le := binary.LittleEndian
	vm.mem.b[ro+0x200] = 0x5a
	vm.mem.b[ro+0x201] = 0x5b
	vm.mem.b[ro+0x202] = 0x5c
	vm.mem.b[ro+0x400] = 0x00
	code := []byte{0x48, 0xb9} // movabs $0x0102030405060708, %rcx
	code = le.AppendUint64(code, 0x0102030405060708)
	code = append(code, 0xc6, 0x04, 0x25) // movb $0x11, ro+0x100 (untrapped byte)
	code = le.AppendUint32(code, ro+0x100)
	code = append(code, 0x11)
	movq := len(code)
	code = append(code, 0x48, 0x89, 0x0c, 0x25) // mov %rcx, ro+0xffc
	code = le.AppendUint32(code, ro+0xffc)
	afterMovq := len(code)
	code = append(code, 0xbe) // mov $ro+0x200, %esi
	code = le.AppendUint32(code, ro+0x200)
	code = append(code, 0xbf) // mov $ro+0x300, %edi
	code = le.AppendUint32(code, ro+0x300)
	code = append(code, 0xb9, 3, 0, 0, 0, 0xfc) // mov $3,%ecx; cld
	repAt := len(code)
	code = append(code, 0xf3, 0xa4)                      // rep movsb
	code = append(code, 0xb9, 0x77, 0, 0, 0, 0x31, 0xc0) // mov $0x77,%ecx; xor %eax,%eax
	code = append(code, 0xf0, 0x0f, 0xb1, 0x0c, 0x25)    // lock cmpxchg %ecx, ro+0x400
	code = le.AppendUint32(code, ro+0x400)
	afterCmpxchg := len(code)
	code = append(code, 0xe6, tinyPort, 0xf4)
	copy(vm.mem.b[tinyCode:], code)
	_ = movq

	rec := &recordWrites{}
	vm.SetWriteHook(rec)
	for _, r := range [][2]uint64{{ro + 0xff8, 16}, {ro + 0x300, 3}, {ro + 0x400, 4}} {
		if _, err := vm.TrapWrites(r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	runHandled(t, vm, tinyCode)
	evs := rec.take()
	type ev struct {
		rip, gpa uint64
		size     int
		old, new []byte
	}
	want := []ev{
		{tinyCode + uint64(afterMovq), ro + 0xffc, 4, []byte{0, 0, 0, 0}, []byte{8, 7, 6, 5}},
		{tinyCode + uint64(afterMovq), ro + 0x1000, 4, []byte{0, 0, 0, 0}, []byte{4, 3, 2, 1}},
		{tinyCode + uint64(repAt), ro + 0x300, 1, []byte{0}, []byte{0x5a}},
		{tinyCode + uint64(repAt), ro + 0x301, 1, []byte{0}, []byte{0x5b}},
		{0, ro + 0x302, 1, []byte{0}, []byte{0x5c}}, // rip: at or after the rep (last element)
		{tinyCode + uint64(afterCmpxchg), ro + 0x400, 4, []byte{0, 0, 0, 0}, []byte{0x77, 0, 0, 0}},
	}
	if len(evs) != len(want) {
		t.Fatalf("%d events, want %d: %+v", len(evs), len(want), evs)
	}
	for i, w := range want {
		e := evs[i]
		if (w.rip != 0 && e.RIP != w.rip) || e.GPA != w.gpa || e.Size != w.size ||
			!bytes.Equal(e.Old[:e.Size], w.old) || !bytes.Equal(e.New[:e.Size], w.new) {
			t.Errorf("event %d = rip %#x gpa %#x size %d % x -> % x, want rip %#x gpa %#x size %d % x -> % x",
				i, e.RIP, e.GPA, e.Size, e.Old[:e.Size], e.New[:e.Size], w.rip, w.gpa, w.size, w.old, w.new)
		}
	}
	t.Logf("rep movsb's last element: rip %#x (the rep is at %#x)", evs[4].RIP, tinyCode+repAt)
	if st := vm.WriteTrapStats(); st.Exits != 7 || st.Events != 6 {
		t.Errorf("stats %+v, want 7 exits (one untrapped byte), 6 events", st)
	}
	if vm.mem.b[ro+0x100] != 0x11 || le.Uint64(vm.mem.b[ro+0xffc:]) != 0x0102030405060708 ||
		!bytes.Equal(vm.mem.b[ro+0x300:ro+0x303], []byte{0x5a, 0x5b, 0x5c}) || vm.mem.b[ro+0x400] != 0x77 {
		t.Error("the guest's stores are not in RAM as it made them")
	}
}

// TestTrapWritesRefusals: bad ranges and unknown ids are refused with
// typed errors, and a LogDirty range over trapped pages is refused.
func TestTrapWritesRefusals(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	if _, err := vm.TrapWrites(0x1000, 0); !errors.Is(err, ErrBadConfig) {
		t.Errorf("empty range: %v", err)
	}
	if _, err := vm.TrapWrites(tinyMem-4, 8); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("past RAM: %v", err)
	}
	if err := vm.UntrapWrites(42); !errors.Is(err, ErrTrapRefused) {
		t.Errorf("unknown id: %v", err)
	}
	id1, err := vm.TrapWrites(tinyWatch+0x10, 4)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := vm.TrapWrites(tinyWatch+0x20, 4) // same page
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.LogDirty(tinyWatch, tinyEnd); !errors.Is(err, ErrDirtyLogRefused) {
		t.Errorf("LogDirty over a trapped page: %v, want ErrDirtyLogRefused", err)
	}
	// One trap gone, the page stays read-only for the other.
	if err := vm.UntrapWrites(id1); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(vm.slots, func(s memslot) bool { return s.flags&memReadonly != 0 && s.gpa == tinyWatch }) {
		t.Errorf("slots %+v: the page of the remaining trap is not read-only", vm.slots)
	}
	if err := vm.UntrapWrites(id2); err != nil {
		t.Fatal(err)
	}
	if len(vm.slots) != 1 {
		t.Errorf("slots %+v after the last trap, want one", vm.slots)
	}
	// With the traps gone the watch can be set.
	if err := vm.LogDirty(tinyWatch, tinyEnd); err != nil {
		t.Errorf("LogDirty after the traps: %v", err)
	}
}
