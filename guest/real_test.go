package guest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// realFiles returns the paths of a kernel and its map in the repository's
// .cache/images (made by the image tooling, not by tests), skipping the
// test when they are not there.
func realFiles(t *testing.T, image, smap string) (string, string) {
	t.Helper()
	dir := filepath.Join("..", ".cache", "images")
	image, smap = filepath.Join(dir, image), filepath.Join(dir, smap)
	for _, p := range []string{image, smap} {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			t.Skipf("%s not present (built by the image tooling); skipping the real-kernel check", p)
		}
	}
	return image, smap
}

func checkRealKernel(t *testing.T, k *Kernel) {
	t.Helper()
	syms := k.Symbols
	s, err := syms.Lookup("do_sys_openat2")
	if err != nil {
		t.Fatal(err)
	}
	if got := syms.FormatAddr(s.Addr + 0x10); !strings.HasPrefix(got, "do_sys_openat2+0x10/0x") {
		t.Errorf("FormatAddr = %q", got)
	}
	if !syms.InText(s.Addr) {
		t.Error("do_sys_openat2 not in text")
	}
	slid := syms.Slid(0x1e00000)
	if got, _ := slid.Lookup("do_sys_openat2"); got.Addr != s.Addr+0x1e00000 {
		t.Errorf("slid address %#x", got.Addr)
	}
	if pc, err := syms.Lookup("runqueues"); err == nil && !pc.PerCPU {
		t.Errorf("runqueues at %#x not per-CPU", pc.Addr)
	}
	t.Logf("%d symbols, text %#x, image %s", syms.Len(), syms.Text(), k.Image.Version)
}

func TestRealStockKernel(t *testing.T) {
	image, smap := realFiles(t, "stock/vmlinuz", "stock/System.map")
	k, err := OpenKernel(image, smap)
	if err != nil {
		t.Fatal(err)
	}
	checkRealKernel(t, k)
	types, err := k.BTF()
	if err != nil {
		t.Fatal(err)
	}
	off, err := types.MemberOffset("task_struct", "comm")
	if err != nil || off == 0 {
		t.Errorf("task_struct.comm at %d, %v", off, err)
	}
	size, err := types.StructSize("task_struct")
	if err != nil || size <= off {
		t.Errorf("sizeof(task_struct) = %d, %v", size, err)
	}
	params, ret, err := types.FuncProto("do_sys_openat2")
	if err != nil || len(params) != 3 || params[1].Type != "const char *" {
		t.Errorf("do_sys_openat2 = %+v -> %s, %v", params, ret, err)
	}
	t.Logf("task_struct.comm at %d, sizeof %d; do_sys_openat2%+v -> %s", off, size, params, ret)
}

func TestRealMiniKernel(t *testing.T) {
	image, smap := realFiles(t, "mini/current/bzImage", "mini/current/System.map")
	k, err := OpenKernel(image, smap)
	if err != nil {
		t.Fatal(err)
	}
	checkRealKernel(t, k)
	if _, err := k.BTF(); err != nil && !errors.Is(err, ErrNoBTF) {
		t.Errorf("BTF: %v", err)
	}
}

func TestRealMismatch(t *testing.T) {
	image, _ := realFiles(t, "stock/vmlinuz", "stock/System.map")
	_, smap := realFiles(t, "mini/current/bzImage", "mini/current/System.map")
	_, err := OpenKernel(image, smap)
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("stock image with the mini map: %v", err)
	}
	t.Log(err)
}
