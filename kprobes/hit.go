package kprobes

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/hvprobe/hvprobe/vmm"
)

// hitStatus is the seeds' kprobe_status, kept per vCPU.
type hitStatus int

const (
	statusIdle    hitStatus = iota
	statusHitSS             // stepping a probed instruction in its slot
	statusReenter           // stepping a probe hit while another was mid-step
)

// cpuState is one vCPU's hit in progress (the seeds' current_kprobe and
// kprobe_ctlblk). Only that vCPU's thread touches it: the VMM serialises
// HandleDebug calls per vCPU.
type cpuState struct {
	status   hitStatus
	site     *site
	members  []*member
	ctx      *Context
	oldFlags uint64 // TF|IF at the hit
	// saved is ORed back into RFLAGS after the step: oldFlags, less IF
	// when the instruction sets IF itself (cli, sti, popf).
	saved uint64
	rsp   uint64 // RSP when the step started: identifies a fault frame
	exits uint64 // VM exits the hit has cost so far
	// count is a rep string instruction's count at the start of the step
	// and at each iteration trap since.
	count uint64
	prev  *cpuState
}

func (m *Manager) cpuState(id int) *cpuState {
	m.mu.RLock()
	if id >= 0 && id < len(m.cpus) {
		st := m.cpus[id]
		m.mu.RUnlock()
		return st
	}
	m.mu.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.cpus) <= id {
		m.cpus = append(m.cpus, &cpuState{})
	}
	return m.cpus[id]
}

// HandleDebug is the vmm.DebugHook: it runs on the vCPU's own thread for
// every breakpoint and single-step stop of that vCPU.
func (m *Manager) HandleDebug(cpu vmm.CPU, ev vmm.DebugEvent) bool {
	if cpu.ID() < 0 {
		return false
	}
	switch ev.Kind {
	case vmm.DebugBreakpoint:
		return m.onBreakpoint(cpu, ev.RIP)
	case vmm.DebugSingleStep:
		return m.onStep(cpu)
	}
	return false
}

func (m *Manager) onBreakpoint(cpu vmm.CPU, rip uint64) bool {
	now := time.Now()
	if rip == m.tramp {
		return m.onReturn(cpu, now)
	}
	st := m.cpuState(cpu.ID())
	if (st.status == statusHitSS || st.status == statusReenter) && rip == st.site.slotVA+uint64(len(st.site.in.raw)) {
		// The int3 after the stepped instruction in its slot: the step's
		// trap never came (PVM loses it when the instruction exits for
		// port I/O, docs/QUIRKS.md #47) and the vCPU ran on to it. The
		// instruction has run; this is the step's end.
		m.st.guardSteps.Add(1)
		return m.onStep(cpu)
	}
	m.mu.RLock()
	s := m.byVA[rip]
	if s == nil {
		// Decided under the lock: an arm between the lookup and the look
		// at the byte would make our new int3 look like the guest's own.
		ours := m.strayBreakpoint(rip)
		m.mu.RUnlock()
		return ours
	}
	s.inflight.Add(1)
	members := *s.members.Load()
	m.mu.RUnlock()
	regs, err := cpu.Regs()
	if err != nil {
		// Without registers nothing can be done; leaving the vCPU as it is
		// makes it hit the int3 again, which beats a #BP the guest would
		// die of.
		m.noteErr(fmt.Errorf("probe hit at %#x on vCPU %d: reading registers: %w", rip, cpu.ID(), err))
		m.release(s)
		return true
	}
	m.st.hits.Add(1)
	if st.status != statusIdle {
		m.reenter(cpu, st, s, members, regs)
		return true
	}
	ctx := &Context{CPU: cpu.ID(), Addr: rip, Symbol: s.sym, Offset: s.off, Time: now, regs: &regs, k: m.k, cpu: cpu}
	for _, mb := range members {
		mb.c.hits.Add(1)
	}
	for _, mb := range members {
		if mb.pre != nil && mb.pre(ctx) {
			m.setRegs(cpu, &regs)
			m.st.skipped.Add(1)
			m.account(members, 1)
			m.release(s)
			return true
		}
	}
	hasPost := false
	for _, mb := range members {
		hasPost = hasPost || mb.post != nil
	}
	in := s.in
	switch {
	case in.emulated(hasPost) && emulate(in, rip, &regs, newMachine(m.k, cpu)):
		for _, mb := range members {
			if mb.post != nil {
				mb.post(ctx)
			}
		}
		m.setRegs(cpu, &regs)
		m.st.emulated.Add(1)
		if in.emul.branch() {
			m.st.emulatedBranches.Add(1)
		}
		m.account(members, 1)
		m.release(s)
	case in.boostable && !hasPost:
		s.everBoosted.Store(true)
		regs.RIP = s.slotVA
		m.setRegs(cpu, &regs)
		m.st.boosted.Add(1)
		m.account(members, 1)
		m.release(s)
	default:
		*st = cpuState{status: statusHitSS, site: s, members: members, ctx: ctx}
		m.startStep(cpu, st, &regs)
	}
	return true
}

// startStep sends the vCPU to s's slot for one step with IF clear, so that
// no interrupt lands inside the step.
func (m *Manager) startStep(cpu vmm.CPU, st *cpuState, regs *vmm.Regs) {
	st.oldFlags = regs.RFLAGS & (vmm.FlagTF | vmm.FlagIF)
	st.saved = st.oldFlags
	if st.site.in.ifMod {
		st.saved &^= vmm.FlagIF
	}
	st.rsp = regs.RSP
	st.exits = 1
	st.count = regs.RCX & st.site.in.repMask
	regs.RFLAGS &^= vmm.FlagIF
	regs.RIP = st.site.slotVA
	m.setRegs(cpu, regs)
	if err := cpu.SetSingleStep(true); err != nil {
		m.noteErr(fmt.Errorf("stepping probe at %#x on vCPU %d: %w", st.site.addr, cpu.ID(), err))
	}
}

// reenter handles a probe hit while this vCPU is mid-step in another
// probe's slot (the seeds' KPROBE_REENTER): the hit is counted as missed
// by every probe at the address and its instruction executes without
// handlers.
func (m *Manager) reenter(cpu vmm.CPU, st *cpuState, s *site, members []*member, regs vmm.Regs) {
	m.st.reentered.Add(1)
	for _, mb := range members {
		mb.c.nmissed.Add(1)
	}
	if s.in.emulated(false) && emulate(s.in, s.addr, &regs, newMachine(m.k, cpu)) {
		m.setRegs(cpu, &regs)
		m.account(members, 1)
		m.release(s)
		return
	}
	prev := *st
	*st = cpuState{status: statusReenter, site: s, members: members, prev: &prev}
	m.startStep(cpu, st, &regs)
}

// strayBreakpoint handles an int3 at an address without a site. Callers
// hold mu (read).
func (m *Manager) strayBreakpoint(rip uint64) bool {
	if m.slots.contains(rip) {
		return false
	}
	var b [1]byte
	if m.k.ReadVirt(rip, b[:]) != nil || b[0] == opInt3 {
		return false // not ours: the guest's own #BP
	}
	// Our int3 was removed after the vCPU hit it: the vCPU is still at the
	// address and re-executes the original instruction.
	m.st.raced.Add(1)
	return true
}

func (m *Manager) onStep(cpu vmm.CPU) bool {
	st := m.cpuState(cpu.ID())
	if st.status != statusHitSS && st.status != statusReenter {
		return false
	}
	st.exits++
	s, in := st.site, st.site.in
	regs, rerr := cpu.Regs()
	if rerr == nil && in.rep && regs.RIP == s.slotVA {
		// A rep string instruction traps after each iteration with rip
		// still on it; with its count gone down it is under way, so the
		// step goes on (IF still clear) until rip leaves it.
		if n := regs.RCX & in.repMask; n != 0 && n < st.count {
			st.count = n
			m.st.repIterations.Add(1)
			return true
		}
	}
	if err := cpu.SetSingleStep(false); err != nil {
		m.noteErr(fmt.Errorf("ending step on vCPU %d: %w", cpu.ID(), err))
	}
	if rerr != nil {
		m.noteErr(fmt.Errorf("ending step on vCPU %d: reading registers: %w", cpu.ID(), rerr))
		m.finishStep(cpu, st)
		return true
	}
	if in.branch || regs.RIP != s.slotVA+uint64(len(in.raw)) {
		if m.fixFaultFrame(cpu, st, &regs) {
			m.finishStep(cpu, st)
			return true
		}
		if !in.branch {
			// Neither after the instruction nor in a fault handler: an
			// event the step could not account for. Nothing on the stack
			// identifies where the guest stands; leave it.
			m.st.lostSteps.Add(1)
			m.noteErr(fmt.Errorf("step of probe at %#x on vCPU %d ended at %#x, neither after the instruction nor at a fault", s.addr, cpu.ID(), regs.RIP))
			m.finishStep(cpu, st)
			return true
		}
	}
	if err := m.resume(in, s.addr, s.slotVA, &regs, st.oldFlags); err != nil {
		m.noteErr(fmt.Errorf("fixing up after probe at %#x on vCPU %d: %w", s.addr, cpu.ID(), err))
	}
	regs.RFLAGS = regs.RFLAGS&^vmm.FlagTF | st.saved
	if st.status == statusHitSS {
		st.ctx.regs = &regs
		for _, mb := range st.members {
			if mb.post != nil {
				mb.post(st.ctx)
			}
		}
		m.st.stepped.Add(1)
		m.st.countStepped(in)
	}
	m.setRegs(cpu, &regs)
	m.account(st.members, st.exits)
	m.finishStep(cpu, st)
	return true
}

// finishStep ends the step in st and restores the state it interrupted.
func (m *Manager) finishStep(cpu vmm.CPU, st *cpuState) {
	s := st.site
	if st.prev != nil {
		*st = *st.prev
		if st.status != statusIdle {
			// The outer hit is still waiting for its own step event.
			if err := cpu.SetSingleStep(true); err != nil {
				m.noteErr(fmt.Errorf("resuming outer step on vCPU %d: %w", cpu.ID(), err))
			}
		}
	} else {
		*st = cpuState{}
	}
	m.release(s)
}

// resume applies the seeds' resume_execution fixups to the state after a
// step of in (originally at orig) in the slot at slot.
func (m *Manager) resume(in *insn, orig, slot uint64, regs *vmm.Regs, oldFlags uint64) error {
	switch in.fix {
	case fixCallRel, fixCallAbs:
		if err := m.rewriteTOS(regs.RSP, func(ret uint64) uint64 { return orig + (ret - slot) }); err != nil {
			return err
		}
		if in.fix == fixCallAbs {
			return nil
		}
	case fixNone:
		return nil
	case fixPushf:
		if err := m.rewriteTOS(regs.RSP, func(f uint64) uint64 { return f&^(vmm.FlagTF|vmm.FlagIF) | oldFlags }); err != nil {
			return err
		}
	}
	regs.RIP = orig + (regs.RIP - slot)
	return nil
}

func (m *Manager) rewriteTOS(rsp uint64, f func(uint64) uint64) error {
	var b [8]byte
	if err := m.k.ReadVirt(rsp, b[:]); err != nil {
		return fmt.Errorf("reading top of stack %#x: %w", rsp, err)
	}
	binary.LittleEndian.PutUint64(b[:], f(binary.LittleEndian.Uint64(b[:])))
	if err := m.k.WriteVirt(rsp, b[:]); err != nil {
		return fmt.Errorf("writing top of stack %#x: %w", rsp, err)
	}
	return nil
}

// fixFaultFrame recognises a step that ended at the entry of the guest's
// exception handler because the out-of-line instruction faulted: the CPU
// pushed [error code,] RIP=slot, CS, RFLAGS, RSP=the step's RSP, SS. The
// frame is rewritten so that the guest's handler sees the fault at the
// probe's address with its original IF and TF: exception-table fixups find
// the address, and after the handler the instruction re-executes in place
// (hitting the probe again, as in the seeds).
func (m *Manager) fixFaultFrame(cpu vmm.CPU, st *cpuState, regs *vmm.Regs) bool {
	var b [7 * 8]byte
	if m.k.ReadVirt(regs.RSP, b[:]) != nil {
		return false
	}
	q := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	s := st.site
	for k := 0; k <= 1; k++ {
		if q(k) != s.slotVA || q(k+1)&3 != 0 || q(k+3) != st.rsp {
			continue
		}
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], s.addr)
		frame := regs.RSP + uint64(8*k)
		if err := m.k.WriteVirt(frame, w[:]); err != nil {
			m.noteErr(fmt.Errorf("redirecting fault frame of probe at %#x: %w", s.addr, err))
			return false
		}
		binary.LittleEndian.PutUint64(w[:], q(k+2)&^(vmm.FlagTF|vmm.FlagIF)|st.oldFlags)
		if err := m.k.WriteVirt(frame+16, w[:]); err != nil {
			m.noteErr(fmt.Errorf("restoring flags in fault frame of probe at %#x: %w", s.addr, err))
		}
		m.st.faults.Add(1)
		if st.status == statusHitSS {
			f := Fault{Addr: s.addr, Vector: m.vectorOf(cpu, regs.RIP), HandlerRIP: regs.RIP}
			if k == 1 {
				f.HasErrorCode, f.ErrorCode = true, q(0)
			}
			for _, mb := range st.members {
				if mb.fault != nil && mb.fault(st.ctx, f) {
					break
				}
			}
		}
		m.account(st.members, st.exits)
		return true
	}
	return false
}

// vectorOf finds the IDT gate whose handler starts at rip.
func (m *Manager) vectorOf(cpu vmm.CPU, rip uint64) int {
	sr, err := cpu.Sregs()
	if err != nil {
		return -1
	}
	n := (int(sr.IDT.Limit) + 1) / vmm.IDTGateSize
	idt := make([]byte, vmm.IDTGateSize*n)
	if m.k.ReadVirt(sr.IDT.Base, idt) != nil {
		return -1
	}
	for v := 0; v < n; v++ {
		if vmm.GateOffset(idt[vmm.IDTGateSize*v:]) == rip {
			return v
		}
	}
	return -1
}

func (m *Manager) setRegs(cpu vmm.CPU, regs *vmm.Regs) {
	if err := cpu.SetRegs(*regs); err != nil {
		m.noteErr(fmt.Errorf("writing registers of vCPU %d: %w", cpu.ID(), err))
	}
}

// account records the exits one hit cost.
func (m *Manager) account(members []*member, exits uint64) {
	switch exits {
	case 1:
		m.st.exits1.Add(1)
	case 2:
		m.st.exits2.Add(1)
	default:
		m.st.exitsMore.Add(1)
	}
	for _, mb := range members {
		mb.c.exits.Add(exits)
	}
}
