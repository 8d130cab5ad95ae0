package vmm

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestIoctlPtrStackGrowth: what the kernel writes through ioctlPtr lands in
// the caller's stack variable even when the goroutine's stack grows (and is
// copied) on the way into the syscall. KVM_GET_REGS once returned all
// zeros that way, and the probe engine sent a vCPU to a slot with rsp 0.
// TIOCINQ (FIONREAD) on a pipe stands in for a KVM ioctl that fills a struct.
func TestIoctlPtrStackGrowth(t *testing.T) {
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.Write(p[1], []byte("12345")); err != nil {
		t.Fatal(err)
	}
	// A fresh goroutine per depth starts on a small stack; small frames
	// make some depth put the stack's end right at the syscall.
	for depth := 0; depth < 1500; depth++ {
		got := make(chan int32)
		go func() { got <- inqAtDepth(depth, p[0]) }()
		if n := <-got; n != 5 {
			t.Fatalf("depth %d: TIOCINQ through ioctlPtr gave %d, want 5", depth, n)
		}
	}
}

//go:noinline
func inqAtDepth(depth, fd int) int32 {
	if depth > 0 {
		return inqAtDepth(depth-1, fd)
	}
	return inq(fd)
}

//go:noinline
func inq(fd int) int32 {
	var n int32
	if err := ioctlPtr(fd, unix.TIOCINQ, &n); err != nil {
		return -1
	}
	return n
}
