package guest

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/hvprobe/hvprobe/kimage"
)

const (
	testBanner  = "Linux version 6.1.0-31-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP"
	testVaddr   = 0xffffffff81000000
	testBannerV = testVaddr + 0x80
)

// testELF builds a minimal vmlinux: one PT_LOAD holding .rodata with the
// banner at testBannerV, plus a .BTF section when btfRaw is not nil.
func testELF(t testing.TB, banner string, btfRaw []byte) []byte {
	t.Helper()
	le := binary.LittleEndian
	const dataOff, dataSize = 0x100, 0x200
	shstr := "\x00.rodata\x00.BTF\x00.shstrtab\x00"
	btfOff := uint64(dataOff + dataSize)
	strOff := btfOff + uint64(len(btfRaw))
	shoff := (strOff + uint64(len(shstr)) + 7) &^ 7
	nsec := uint64(4)
	out := make([]byte, shoff+nsec*64)
	copy(out, "\x7fELF\x02\x01\x01")
	le.PutUint16(out[16:], 2)
	le.PutUint16(out[18:], 62)
	le.PutUint32(out[20:], 1)
	le.PutUint64(out[24:], 0x1000000)
	le.PutUint64(out[32:], 64)
	le.PutUint64(out[40:], shoff)
	le.PutUint16(out[52:], 64)
	le.PutUint16(out[54:], 56)
	le.PutUint16(out[56:], 1)
	le.PutUint16(out[58:], 64)
	le.PutUint16(out[60:], uint16(nsec))
	le.PutUint16(out[62:], 3)
	ph := out[64:]
	le.PutUint32(ph, 1)
	le.PutUint64(ph[8:], dataOff)
	le.PutUint64(ph[16:], testVaddr)
	le.PutUint64(ph[24:], 0x1000000)
	le.PutUint64(ph[32:], dataSize)
	le.PutUint64(ph[40:], dataSize)
	copy(out[dataOff+0x80:], banner+"\n\x00")
	copy(out[btfOff:], btfRaw)
	copy(out[strOff:], shstr)
	sh := func(i int, name string, typ uint32, off, size uint64) {
		s := out[shoff+uint64(i)*64:]
		le.PutUint32(s, uint32(strings.Index(shstr, "\x00"+name+"\x00")+1))
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[24:], off)
		le.PutUint64(s[32:], size)
	}
	sh(1, ".rodata", 1, dataOff, dataSize)
	btfType := uint32(1)
	if btfRaw == nil {
		btfType = 8 // NOBITS: no BTF contents
	}
	sh(2, ".BTF", btfType, btfOff, uint64(len(btfRaw)))
	sh(3, ".shstrtab", 3, strOff, uint64(len(shstr)))
	return out
}

func testKernel(t testing.TB, banner, smap string, btfRaw []byte) *Kernel {
	t.Helper()
	img, err := kimage.Open(testELF(t, banner, btfRaw))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := ParseSystemMap(strings.NewReader(smap))
	if err != nil {
		t.Fatal(err)
	}
	return NewKernel(img, syms)
}

const goodMap = "ffffffff81000000 T _stext\nffffffff81000080 R linux_banner\n"

func TestVerify(t *testing.T) {
	tests := []struct {
		name, banner, smap string
		mapVersion         string
		wantMapVer         string // "" when Verify must succeed
	}{
		{"match", testBanner, goodMap, "", ""},
		{"other banner at the address", testBanner, goodMap, "", "6.1.0-28-cloud-amd64"},
		{"banner moved", testBanner, "ffffffff81000090 R linux_banner\n", "", "another kernel"},
		{"outside segments", testBanner, "ffffffff82000000 R linux_banner\n", "6.1.0-28-cloud-amd64", "6.1.0-28-cloud-amd64"},
		{"no linux_banner", testBanner, "ffffffff81000000 T _stext\n", "", "another kernel"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := testKernel(t, testBanner, tc.smap, nil)
			k.MapVersion = tc.mapVersion
			if tc.name == "other banner at the address" {
				k = testKernel(t, testBanner, tc.smap, nil)
				img, _ := kimage.Open(testELF(t, strings.Replace(testBanner, "-31-", "-28-", 1), nil))
				k.Image.Segments = img.Segments // map's banner bytes say -28
			}
			err := k.Verify()
			if tc.wantMapVer == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var me *MismatchError
			if !errors.As(err, &me) || !errors.Is(err, ErrMismatch) {
				t.Fatalf("Verify = %v, want a MismatchError", err)
			}
			want := "System.map is for " + tc.wantMapVer + " but kernel image is 6.1.0-31-cloud-amd64"
			if !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Verify = %q, want prefix %q", err, want)
			}
		})
	}
}

func TestOpenKernel(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vmlinux")
	good := filepath.Join(dir, "System.map-6.1.0-31-cloud-amd64")
	bad := filepath.Join(dir, "System.map-6.1.0-28-cloud-amd64")
	broken := filepath.Join(dir, "System.map")
	for path, data := range map[string]string{
		img: string(testELF(t, testBanner, nil)), good: goodMap,
		bad: "ffffffff81000090 R linux_banner\n", broken: "ffffffff81000000 T\n",
	} {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k, err := OpenKernel(img, good)
	if err != nil {
		t.Fatal(err)
	}
	if k.MapVersion != "6.1.0-31-cloud-amd64" || k.Image.Version != "6.1.0-31-cloud-amd64" {
		t.Errorf("versions %q %q", k.MapVersion, k.Image.Version)
	}
	_, err = OpenKernel(img, bad)
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "System.map is for 6.1.0-28-cloud-amd64 but kernel image is 6.1.0-31-cloud-amd64") {
		t.Errorf("mismatched map: %v", err)
	}
	if _, err = OpenKernel(img, broken); !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), broken) {
		t.Errorf("broken map: %v", err)
	}
	if _, err = OpenKernel(good, good); !errors.Is(err, kimage.ErrFormat) || !strings.Contains(err.Error(), good) {
		t.Errorf("map as image: %v", err)
	}
}

// testBTF marshals a few kernel-like types.
func testBTF(t testing.TB) []byte {
	t.Helper()
	i32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	u64 := &btf.Int{Name: "long long unsigned int", Size: 8}
	long := &btf.Int{Name: "long", Size: 8, Encoding: btf.Signed}
	char := &btf.Int{Name: "char", Size: 1, Encoding: btf.Char}
	u64t := &btf.Typedef{Name: "u64", Type: u64}
	se := &btf.Struct{Name: "sched_entity", Size: 16, Members: []btf.Member{
		{Name: "load", Type: u64t, Offset: 0},
		{Name: "vruntime", Type: u64t, Offset: 64},
	}}
	task := &btf.Struct{Name: "task_struct", Size: 72, Members: []btf.Member{
		{Name: "pid", Type: i32, Offset: 0},
		{Name: "flags", Type: u32, Offset: 32, BitfieldSize: 3},
		{Name: "", Type: &btf.Struct{Size: 16, Members: []btf.Member{
			{Name: "a", Type: long, Offset: 0},
			{Name: "", Type: &btf.Union{Size: 8, Members: []btf.Member{
				{Name: "b", Type: u32}, {Name: "c", Type: u64t},
			}}, Offset: 64},
		}}, Offset: 64},
		{Name: "se", Type: se, Offset: 192},
		{Name: "comm", Type: &btf.Array{Type: char, Index: u32, Nelems: 16}, Offset: 320},
		{Name: "parent", Type: &btf.Pointer{}, Offset: 448},
	}}
	task.Members[5].Type = &btf.Pointer{Target: task}
	how := &btf.Struct{Name: "open_how", Size: 24}
	proto := &btf.FuncProto{Return: long, Params: []btf.FuncParam{
		{Name: "dfd", Type: i32},
		{Name: "filename", Type: &btf.Pointer{Target: &btf.Const{Type: char}}},
		{Name: "how", Type: &btf.Pointer{Target: how}},
	}}
	fn := &btf.Func{Name: "do_sys_openat2", Type: proto, Linkage: btf.StaticFunc}
	b, err := btf.NewBuilder([]btf.Type{task, fn}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestBTF(t *testing.T) {
	k := testKernel(t, testBanner, goodMap, testBTF(t))
	types, err := k.BTF()
	if err != nil {
		t.Fatal(err)
	}
	offsets := []struct {
		path string
		want uint64
		err  error
	}{
		{"pid", 0, nil},
		{"a", 8, nil},            // inside an anonymous struct
		{"c", 16, nil},           // inside an anonymous union in it
		{"se.vruntime", 32, nil}, // nested path
		{"comm", 40, nil},
		{"flags", 0, ErrBitfield},
		{"nope", 0, ErrUnknownType},
		{"pid.x", 0, ErrUnknownType},
	}
	for _, tc := range offsets {
		got, err := types.MemberOffset("task_struct", tc.path)
		if !errors.Is(err, tc.err) || (tc.err == nil && got != tc.want) {
			t.Errorf("MemberOffset(task_struct, %s) = %d, %v; want %d, %v", tc.path, got, err, tc.want, tc.err)
		}
	}
	if bits, size, err := types.MemberBitOffset("task_struct", "flags"); err != nil || bits != 32 || size != 3 {
		t.Errorf("MemberBitOffset(flags) = %d, %d, %v", bits, size, err)
	}
	if n, err := types.StructSize("task_struct"); err != nil || n != 72 {
		t.Errorf("StructSize = %d, %v", n, err)
	}
	if _, err := types.StructSize("mm_struct"); !errors.Is(err, ErrUnknownType) {
		t.Errorf("StructSize(mm_struct) = %v", err)
	}
	params, ret, err := types.FuncProto("do_sys_openat2")
	want := []Param{{"dfd", "int", 4}, {"filename", "const char *", 8}, {"how", "struct open_how *", 8}}
	if err != nil || ret != "long" || !reflect.DeepEqual(params, want) {
		t.Errorf("FuncProto = %+v, %q, %v; want %+v", params, ret, err, want)
	}
	if _, _, err := types.FuncProto("vfs_read"); !errors.Is(err, ErrUnknownType) {
		t.Errorf("FuncProto(vfs_read) = %v", err)
	}

	if _, err := testKernel(t, testBanner, goodMap, nil).BTF(); !errors.Is(err, ErrNoBTF) {
		t.Errorf("BTF of a kernel without it: %v", err)
	}
}

func TestTypeString(t *testing.T) {
	char := &btf.Int{Name: "char", Size: 1}
	for want, typ := range map[string]btf.Type{
		"void":               nil,
		"char **":            &btf.Pointer{Target: &btf.Pointer{Target: char}},
		"char * const":       &btf.Const{Type: &btf.Pointer{Target: char}},
		"volatile char":      &btf.Volatile{Type: char},
		"char[4]":            &btf.Array{Type: char, Nelems: 4},
		"union (anon)":       &btf.Union{},
		"enum e":             &btf.Enum{Name: "e"},
		"void (*)(char *)":   &btf.Pointer{Target: &btf.FuncProto{Params: []btf.FuncParam{{Type: &btf.Pointer{Target: char}}}}},
		"struct task_struct": &btf.Fwd{Name: "task_struct", Kind: btf.FwdStruct},
	} {
		if got := TypeString(typ); got != want {
			t.Errorf("TypeString = %q, want %q", got, want)
		}
	}
}
