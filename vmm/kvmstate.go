package vmm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mirrors of the uapi structs a snapshot carries beyond registers
// (arch/x86/include/uapi/asm/kvm.h); their ioctl numbers are in kvm.go.

const (
	// MSR_IA32_TSC_DEADLINE: KVM arms the LAPIC timer from it against the
	// current TSC, so it is written after every other MSR (as Firecracker does).
	msrTSCDeadline = 0x6e0
	// MSR_IA32_TSC: the guest's view of the TSC (host TSC plus KVM's offset).
	msrIA32TSC = 0x10
)

// irqChip mirrors struct kvm_irqchip; chip IDs 0 and 1 are the PICs, 2 the IOAPIC.
type irqChip struct {
	ChipID uint32
	_      uint32
	Chip   [512]byte
}

// clockData mirrors struct kvm_clock_data.
type clockData struct {
	Clock    uint64
	Flags    uint32
	_        uint32
	Realtime uint64
	HostTSC  uint64
	_        [4]uint32
}

// pitState2 mirrors struct kvm_pit_state2 (three 24-byte channel states).
type pitState2 struct {
	Channels [3][24]byte
	Flags    uint32
	_        [9]uint32
}

// debugRegs mirrors struct kvm_debugregs.
type debugRegs struct {
	DB    [4]uint64
	DR6   uint64
	DR7   uint64
	Flags uint64
	_     [9]uint64
}

// xcrs mirrors struct kvm_xcrs.
type xcrs struct {
	NrXCRs uint32
	Flags  uint32
	XCRs   [16]struct {
		XCR   uint32
		_     uint32
		Value uint64
	}
	_ [16]uint64
}

// raw returns the bytes of a mirror struct, for the snapshot file.
func raw[T any](p *T) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))...)
}

// fromRaw fills a mirror struct from snapshot bytes of exactly its size.
func fromRaw[T any](b []byte, p *T) error {
	if uintptr(len(b)) != unsafe.Sizeof(*p) {
		return fmt.Errorf("%w: %T state is %d bytes, want %d", ErrBadSnapshot, *p, len(b), unsafe.Sizeof(*p))
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(p)), len(b)), b)
	return nil
}

// rawSize checks that b can fill a mirror struct T (fromRaw), naming it
// what.
func rawSize[T any](what string, b []byte) error {
	var x T
	if uintptr(len(b)) != unsafe.Sizeof(x) {
		return fmt.Errorf("%s state is %d bytes, want %d", what, len(b), unsafe.Sizeof(x))
	}
	return nil
}

// getRaw is a step that reads a mirror struct T with one GET ioctl and
// keeps its bytes in dst.
func getRaw[T any](fd int, req uintptr, name string, dst *[]byte) func() error {
	return func() error {
		var x T
		if err := ioctlPtr(fd, req, &x); err != nil {
			return wrap(name, err)
		}
		*dst = raw(&x)
		return nil
	}
}

// setRaw is a step that loads saved bytes into a mirror struct T and
// writes it with one SET ioctl.
func setRaw[T any](fd int, req uintptr, name string, b []byte) func() error {
	return func() error {
		var x T
		if err := fromRaw(b, &x); err != nil {
			return err
		}
		return wrap(name, ioctlPtr(fd, req, &x))
	}
}

// msrIndexList is every MSR KVM saves and restores for a vCPU
// (KVM_GET_MSR_INDEX_LIST on /dev/kvm: architectural, emulated and
// kvm-clock MSRs).
func msrIndexList(kvmFD int) ([]uint32, error) {
	for n := 256; n <= 1<<14; n *= 2 {
		buf := make([]uint32, 1+n)
		buf[0] = uint32(n)
		_, err := ioctlP(kvmFD, kvmGetMSRIndexList, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, wrap("KVM_GET_MSR_INDEX_LIST", err)
		}
		return append([]uint32(nil), buf[1:1+buf[0]]...), nil
	}
	return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: more than %d MSRs", 1<<14)
}

// readMSRs reads the MSRs of list that this vCPU has. KVM_GET_MSRS stops
// at the first MSR it cannot read; that one is dropped and reading goes on.
func (v *VCPU) readMSRs(list []uint32) ([]MSREntry, error) {
	var out []MSREntry
	for len(list) > 0 {
		e := make([]MSREntry, len(list))
		for i, idx := range list {
			e[i].Index = idx
		}
		n, err := msrIoctl(v.fd, kvmGetMSRs, e)
		if err != nil {
			return nil, wrap("KVM_GET_MSRS", err)
		}
		out = append(out, e[:n]...)
		list = list[min(n+1, len(list)):]
	}
	return out, nil
}

// writeMSRs restores MSRs, the TSC deadline last.
func (v *VCPU) writeMSRs(msrs []MSREntry) error {
	var first, last []MSREntry
	for _, m := range msrs {
		if m.Index == msrTSCDeadline {
			last = append(last, m)
		} else {
			first = append(first, m)
		}
	}
	for _, batch := range [][]MSREntry{first, last} {
		if len(batch) == 0 {
			continue
		}
		n, err := msrIoctl(v.fd, kvmSetMSRs, batch)
		if err != nil {
			return wrap("KVM_SET_MSRS", err)
		}
		if n < len(batch) {
			return fmt.Errorf("KVM_SET_MSRS: MSR %#x (value %#x) was refused", batch[n].Index, batch[n].Data)
		}
	}
	return nil
}
