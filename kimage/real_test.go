package kimage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// realImage reads a kernel built or downloaded into the repository's
// .cache/images (by the image tooling, not by tests); the test is skipped
// when it is not there.
func realImage(t *testing.T, rel string) []byte {
	t.Helper()
	path := filepath.Join("..", "..", ".cache", "images", filepath.FromSlash(rel))
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s not present (built by the image tooling); skipping the real-kernel check", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func checkReal(t *testing.T, img *Image, versionPrefix string) {
	t.Helper()
	if !strings.HasPrefix(img.Version, versionPrefix) {
		t.Errorf("Version %q, want prefix %q (banner %q)", img.Version, versionPrefix, img.Banner)
	}
	if len(img.Segments) == 0 {
		t.Fatal("no PT_LOAD segments")
	}
	for i, s := range img.Segments {
		t.Logf("PT_LOAD %d: paddr %#x vaddr %#x memsz %#x filesz %#x", i, s.Paddr, s.Vaddr, s.Memsz, len(s.Data))
	}
	btf, err := img.Section(".BTF")
	t.Logf("%v %s, %s, version %s, entry %#x, ELF %d bytes, .BTF %d bytes (%v)",
		img.Kind, img.Compression, img.Banner, img.Version, img.Entry, len(img.ELF), len(btf), err)
	if img.Relocs != nil {
		t.Logf("relocs: %d 32-bit, %d inverse, %d 64-bit", len(img.Relocs.Rel32), len(img.Relocs.Inv32), len(img.Relocs.Rel64))
	}
}

func TestRealMiniBzImage(t *testing.T) {
	img, err := Open(realImage(t, "mini/current/bzImage"))
	if err != nil {
		t.Fatal(err)
	}
	checkReal(t, img, "6.1")
	if img.Kind != BzImage || img.Compression != "lz4" {
		t.Errorf("kind %v compression %q, want an lz4 bzImage", img.Kind, img.Compression)
	}
	if img.Relocs == nil {
		t.Error("RELOCATABLE+RANDOMIZE_BASE kernel without a relocation table")
	}
	// The relocated kernel must load at a random 2 MiB slide.
	ram := make([]byte, 256<<20)
	if _, err := img.Load(ram, 16<<20, 32<<20); err != nil {
		t.Fatalf("Load with slides: %v", err)
	}
}

func TestRealMiniVmlinux(t *testing.T) {
	img, err := Open(realImage(t, "mini/current/vmlinux"))
	if err != nil {
		t.Fatal(err)
	}
	checkReal(t, img, "6.1")
}

func TestRealStockVmlinuz(t *testing.T) {
	img, err := Open(realImage(t, "stock/vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	checkReal(t, img, "6.1")
	if _, err := img.Section(".BTF"); err != nil {
		t.Errorf("Debian cloud kernel without .BTF: %v", err)
	}
	ram := make([]byte, 160<<20)
	if _, err := img.Load(ram, 32<<20, 64<<20); err != nil {
		t.Fatalf("Load with slides: %v", err)
	}
}
