package vmm

import (
	"testing"

	"github.com/hvprobe/hvprobe/vmm/kimage"
)

// The tiny guest used by the KVM tests must be a kernel image kimage
// accepts and loads where the boot code expects it.
func TestTinyELFLoads(t *testing.T) {
	img, err := kimage.Open(tinyELF([]byte{0xf4}))
	if err != nil {
		t.Fatal(err)
	}
	ram := make([]byte, 64<<20)
	entry, err := img.Load(ram, 2<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	if entry != 0x1200000 || ram[0x1200000] != 0xf4 {
		t.Fatalf("entry %#x, byte there %#x", entry, ram[entry])
	}
}
