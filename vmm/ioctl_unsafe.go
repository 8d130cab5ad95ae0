package vmm

import (
	"errors"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl is the one place hvprobe enters the kernel's KVM API, for
// ioctls whose argument is a number. EINTR is returned to the caller
// (KVM_RUN uses it to report a kick); every other ioctl retries it.
func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if errno == 0 {
			return r, nil
		}
		if errno == unix.EINTR && req != kvmRun {
			continue
		}
		return r, errno
	}
}

// ioctlP is ioctl with a pointer argument. The pointer becomes a uintptr
// only inside the Syscall call expression: that is the one place the
// compiler keeps the object alive and in place for the call (unsafe.Pointer
// rule 4). Converted any earlier, a stack-allocated struct can be moved by
// a goroutine stack copy while the kernel writes to its old address: seen
// as KVM_GET_REGS "returning" all-zero registers (docs/QUIRKS.md #25).
func ioctlP(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
		if errno == 0 {
			return r, nil
		}
		if errno == unix.EINTR {
			continue
		}
		return r, errno
	}
}

// ioctlPtr passes a pointer to a mirror struct.
func ioctlPtr[T any](fd int, req uintptr, p *T) error {
	_, err := ioctlP(fd, req, unsafe.Pointer(p))
	return err
}

// mmapShared maps size bytes of fd (the vCPU's kvm_run page).
func mmapShared(fd, size int) ([]byte, error) {
	return unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

// mmapAnon maps guest RAM. MAP_NORESERVE: a 512 MiB guest touches a fraction.
func mmapAnon(size int) ([]byte, error) {
	return unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
}

func bytesAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// ioctlBuf passes a byte buffer (a variable-size KVM struct).
func ioctlBuf(fd int, req uintptr, b []byte) error {
	_, err := ioctlP(fd, req, unsafe.Pointer(&b[0]))
	return err
}

// runView is a typed view of the mmap'd kvm_run page.
type runView struct{ p unsafe.Pointer }

func newRunView(b []byte) runView { return runView{unsafe.Pointer(&b[0])} }

func (r runView) run() *kvmRunHeader { return (*kvmRunHeader)(r.p) }

// union returns the exit-specific union at offset 32 of kvm_run.
func (r runView) union() *[256]byte {
	return (*[256]byte)(unsafe.Add(r.p, kvmRunUnionOffset))
}

// cpuidBuf builds a struct kvm_cpuid2 with room for n entries.
func cpuidIoctl(fd int, req uintptr, entries []CPUIDEntry) ([]CPUIDEntry, error) {
	type hdr struct {
		nent uint32
		_    uint32
	}
	buf := make([]byte, int(unsafe.Sizeof(hdr{}))+len(entries)*int(unsafe.Sizeof(CPUIDEntry{})))
	h := (*hdr)(unsafe.Pointer(&buf[0]))
	h.nent = uint32(len(entries))
	es := unsafe.Slice((*CPUIDEntry)(unsafe.Add(unsafe.Pointer(&buf[0]), 8)), len(entries))
	copy(es, entries)
	if _, err := ioctlP(fd, req, unsafe.Pointer(&buf[0])); err != nil {
		return nil, err
	}
	out := make([]CPUIDEntry, h.nent)
	copy(out, es[:h.nent])
	return out, nil
}

// msrIoctl runs KVM_GET_MSRS / KVM_SET_MSRS on a struct kvm_msrs.
func msrIoctl(fd int, req uintptr, entries []MSREntry) (int, error) {
	buf := make([]byte, 8+len(entries)*int(unsafe.Sizeof(MSREntry{})))
	*(*uint32)(unsafe.Pointer(&buf[0])) = uint32(len(entries))
	es := unsafe.Slice((*MSREntry)(unsafe.Add(unsafe.Pointer(&buf[0]), 8)), len(entries))
	copy(es, entries)
	n, err := ioctlP(fd, req, unsafe.Pointer(&buf[0]))
	copy(entries, es)
	return int(n), err
}

var errShortMSR = errors.New("KVM processed fewer MSRs than asked")

// runImmediateExit is kvm_run's first 32-bit word with immediate_exit
// (byte 1) set and request_interrupt_window (byte 0) clear: one atomic
// store, since a kick comes from another thread.
const runImmediateExit = 1 << 8

// setImmediateExit sets or clears kvm_run.immediate_exit.
func (v *VCPU) setImmediateExit(on bool) {
	var w uint32
	if on {
		w = runImmediateExit
	}
	atomic.StoreUint32((*uint32)(v.run.p), w)
}

// kick makes a KVM_RUN in progress (or about to start) return EINTR.
// immediate_exit covers the window before the thread enters the kernel;
// the signal covers a thread already inside KVM_RUN. SIGURG is the Go
// runtime's own preemption signal, so its handler is harmless.
func (v *VCPU) kick() {
	v.setImmediateExit(true)
	if tid := v.tid.Load(); tid != 0 {
		unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

func (v *VCPU) decode(hdr *kvmRunHeader) exitInfo {
	e := exitInfo{reason: hdr.ExitReason}
	u := unsafe.Pointer(v.run.union())
	switch e.reason {
	case exitIO:
		e.io = *(*ioExit)(u)
		n := int(e.io.Size) * int(e.io.Count)
		e.ioData = v.runBuf[e.io.DataOffset : int(e.io.DataOffset)+n]
	case exitMMIO:
		e.mmio = *(*mmioExit)(u)
	case exitDebug:
		e.debug = *(*debugExit)(u)
	case exitInternalError:
		e.internal = *(*internalExit)(u)
	case exitFailEntry:
		e.internal.Suberror = uint32(*(*uint64)(u))
	case exitSystemEvent:
		e.system = *(*systemEventExit)(u)
	}
	return e
}

// dirtyLog mirrors struct kvm_dirty_log. Bitmap is the union's
// dirty_bitmap pointer; typed unsafe.Pointer (not the union's __u64) so
// that the collector keeps the buffer alive and a stack copy would update
// it. This mirror lives here, not in kvm.go, because of that field.
type dirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap unsafe.Pointer
}

// getDirtyLog runs KVM_GET_DIRTY_LOG on a VM fd: KVM fills bitmap with the
// slot's pages written since the last call (one bit per page, bit i of
// word w is page 64w+i) and write-protects them again. bitmap must hold
// (pages+63)/64 words: KVM copies exactly that many.
func getDirtyLog(vmFD int, slot uint32, bitmap []uint64) error {
	l := dirtyLog{Slot: slot, Bitmap: unsafe.Pointer(&bitmap[0])}
	err := ioctlPtr(vmFD, kvmGetDirtyLog, &l)
	runtime.KeepAlive(bitmap)
	return err
}
