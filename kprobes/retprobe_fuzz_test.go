package kprobes

import (
	"testing"

	"github.com/hvprobe/hvprobe/vmm"
)

// FuzzKretprobeReturns plays a hostile guest against two kretprobes on one
// function: calls from any stack slot (or an unmapped one), returns through
// the trampoline from frames that never called, return addresses rewritten
// on live frames (to junk or to the trampoline itself), and unregistering
// and registering again at any point. Whatever the guest does, the engine
// must not panic, must keep each kretprobe's instance accounting exact and
// its tables bounded, and a return it claims must go to an address the
// guest once had in that frame, never back into the trampoline.
func FuzzKretprobeReturns(f *testing.F) {
	f.Add([]byte{0, 1, 1, 1, 4, 0})                   // call; return
	f.Add([]byte{0, 1, 0, 1, 0, 1, 1, 1, 1, 1})       // nested calls on one slot
	f.Add([]byte{0, 2, 2, 2, 2, 0xff, 1, 2})          // live frame rewritten, then returns
	f.Add([]byte{0, 3, 3, 0, 3, 0, 3, 0, 3, 1, 3, 1}) // past maxactive
	f.Add([]byte{0, 0, 3, 3, 3, 0, 4, 1, 4, 1, 3})    // a dead frame reclaimed
	f.Add([]byte{0, 4, 3, 0, 0, 4, 1, 4})             // unregistered in flight
	f.Add([]byte{0, 5, 0, 1, 5, 1, 1, 1})             // unmapped stack
	f.Add([]byte{2, 6, 1, 6, 1, 6})                   // the trampoline written as a return address
	f.Fuzz(func(t *testing.T, prog []byte) {
		e := newEnv(t)
		fn := e.fn("f1", 0x90, 0xc3)
		tramp := e.m.TrampolineVA()
		if len(prog) == 0 || len(prog) > 1024 {
			return // longer programs find nothing new, only cost time
		}
		maxActive := int(prog[0]%4) + 1
		rps := [2]*Kretprobe{}
		registered := [2]bool{}
		for i := range rps {
			rps[i] = &Kretprobe{Symbol: "f1", MaxActive: maxActive, Handler: func(*RetContext) {}}
			if err := e.m.RegisterKretprobe(rps[i]); err != nil {
				t.Fatal(err)
			}
			registered[i] = true
		}
		// Every value the guest ever had in a slot when a call was probed
		// there: the only places a claimed return may go.
		seen := map[uint64]bool{}
		slotVA := func(b byte) uint64 {
			if b%16 == 15 {
				return unmappedVA
			}
			return stackVA + 0x100 + 8*uint64(b%16)
		}
		for i := 1; i+1 < len(prog); i += 2 {
			op, arg := prog[i]%5, prog[i+1]
			slot := slotVA(arg)
			switch op {
			case 0: // a call whose return address is at slot
				e.cpu.regs = vmm.Regs{RSP: slot, RIP: fn, RFLAGS: 0x202}
				if slot != unmappedVA {
					var b [8]byte
					if e.k.ReadVirt(slot, b[:]) == nil {
						seen[readU64(e.k, slot)] = true
					}
				}
				for n := 0; n < 4 && e.cpu.regs.RIP != fn+1; n++ {
					if _, err := e.exec(e.cpu); err != nil {
						break
					}
				}
			case 1: // a ret that popped the trampoline address from slot
				e.cpu.regs = vmm.Regs{RSP: slot + 8, RIP: tramp, RFLAGS: 0x202}
				if e.m.HandleDebug(e.cpu, vmm.DebugEvent{Kind: vmm.DebugBreakpoint, RIP: tramp}) {
					if got := e.cpu.regs.RIP; got == tramp || !seen[got] {
						t.Fatalf("return from slot %#x went to %#x, which the guest never had there", slot, got)
					}
				}
			case 2: // the guest rewrites a slot
				if slot != unmappedVA {
					v := sentinel + uint64(arg)
					if arg%3 == 0 {
						v = tramp
					}
					writeU64(e.k, slot, v)
				}
			case 3: // a fresh return address at slot
				if slot != unmappedVA {
					writeU64(e.k, slot, sentinel-uint64(arg)*16)
				}
			case 4: // unregister or register again
				i := int(arg % 2)
				if registered[i] {
					if err := e.m.UnregisterKretprobe(rps[i]); err != nil {
						t.Fatal(err)
					}
				} else {
					rps[i] = &Kretprobe{Symbol: "f1", MaxActive: maxActive, Handler: func(*RetContext) {}}
					if err := e.m.RegisterKretprobe(rps[i]); err != nil {
						t.Fatal(err)
					}
				}
				registered[i] = !registered[i]
			}
			e.m.retMu.Lock()
			live := 0
			inTable := map[*instance]bool{}
			for _, l := range e.m.rets.live {
				live += len(l)
				for _, in := range l {
					inTable[in] = true
				}
			}
			for j, rp := range rps {
				if registered[j] && len(rp.free)+len(rp.used) != rp.active {
					t.Errorf("kretprobe %d: %d free + %d used != maxactive %d", j, len(rp.free), len(rp.used), rp.active)
				}
				for in := range rp.used {
					if !inTable[in] {
						t.Fatalf("kretprobe %d: an instance in use is in no frame: leaked", j)
					}
				}
			}
			if len(e.m.rets.graveyard) > graveyardCap || len(e.m.rets.graveOrder) > graveyardCap {
				t.Errorf("graveyard grew to %d", len(e.m.rets.graveyard))
			}
			e.m.retMu.Unlock()
			// Instances of unregistered kretprobes stay live until their
			// frame returns or is reused, so the bound is every instance
			// ever made: at most 2 + 2 per register op.
			if live > maxActive*(2+len(prog)) {
				t.Fatalf("%d live instances", live)
			}
		}
	})
}
