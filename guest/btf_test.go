package guest

import (
	"debug/dwarf"
	"debug/elf"
	"errors"
	"reflect"
	"testing"
)

// vfsReadName is the BTF-style access the e2e test fetches as a string.
var vfsReadName = []Step{{"f_path", true}, {"dentry", false}, {"d_name", true}, {"name", false}}

// TestRealStockFieldAccess resolves file->f_path.dentry->d_name.name on
// the stock 6.1 kernel against layout facts of 6.1 without lockdep:
// struct file opens with the 16-byte union f_u, then struct path {mnt,
// dentry}; struct dentry opens with d_flags, d_seq (4 bytes each),
// d_hash (16) and d_parent (8) before d_name, a struct qstr whose first
// 8 bytes are the hash and length.
func TestRealStockFieldAccess(t *testing.T) {
	image, smap := realFiles(t, "stock/vmlinuz", "stock/System.map")
	k, err := OpenKernel(image, smap)
	if err != nil {
		t.Fatal(err)
	}
	types, err := k.BTF()
	if err != nil {
		t.Fatal(err)
	}
	acc, err := types.FieldAccess("vfs_read", 0, vfsReadName)
	if err != nil {
		t.Fatal(err)
	}
	want := Access{Offsets: []uint64{16 + 8, 32 + 8}, Kind: ValueCharPointer, Type: "const unsigned char *"}
	if !reflect.DeepEqual(acc, want) {
		t.Errorf("vfs_read file->f_path.dentry->d_name.name = %+v, want %+v", acc, want)
	}
	acc, err = types.FieldAccess("vfs_read", 2, nil)
	if err != nil || acc.Kind != ValueInt || acc.Size != 8 || acc.Signed || acc.Type != "size_t" {
		t.Errorf("vfs_read count = %+v, %v", acc, err)
	}
	acc, err = types.FieldAccess("vfs_read", 0, []Step{{"f_path", true}, {"dentry", false}, {"d_name", true}, {"len", false}})
	if err != nil || acc.Kind != ValueInt || acc.Size != 4 || !reflect.DeepEqual(acc.Offsets, []uint64{24, 32 + 4}) {
		t.Errorf("d_name.len (in the anonymous struct of the hash_len union) = %+v, %v", acc, err)
	}
	acc, err = types.FieldAccess("vfs_read", 0, []Step{{"f_path", true}, {"dentry", false}, {"d_iname", true}})
	if err != nil || acc.Kind != ValueCharArray {
		t.Errorf("d_iname = %+v, %v", acc, err)
	}
	acc, err = types.FieldAccess("d_path", -1, nil)
	if err != nil || acc.Kind != ValueCharPointer {
		t.Errorf("d_path's return = %+v, %v", acc, err)
	}

	refusals := []struct {
		arg   int
		steps []Step
		step  int
		is    error
		msg   string
	}{
		{0, []Step{{"f_nosuch", true}}, 0, ErrUnknownType, "struct file has no member f_nosuch"},
		{0, []Step{{"f_path", true}, {"dentry", true}}, 1, ErrUnknownType, "f_path is struct path, not a pointer to a struct or union"},
		{0, []Step{{"f_flags", true}, {"x", false}}, 1, ErrUnknownType, "f_flags is unsigned int, not a struct or union"},
		{2, []Step{{"x", true}}, 0, ErrUnknownType, "count is size_t, not a pointer to a struct or union"},
	}
	for _, r := range refusals {
		_, err := types.FieldAccess("vfs_read", r.arg, r.steps)
		var se *StepError
		if !errors.As(err, &se) || se.Step != r.step || !errors.Is(err, r.is) || se.Msg != r.msg {
			t.Errorf("%+v: %v", r.steps, err)
		}
	}
	// sk_buff.pkt_type is a 3-bit bitfield, in an anonymous struct group:
	// the byte it starts in, and its bits there.
	acc, err = types.FieldAccess("consume_skb", 0, []Step{{"pkt_type", true}})
	bits, size, berr := types.MemberBitOffset("sk_buff", "pkt_type")
	if err != nil || berr != nil || size != 3 || acc.BitSize != 3 ||
		acc.Offsets[0] != bits/8 || uint64(acc.BitOffset) != bits%8 || acc.Kind != ValueInt {
		t.Errorf("skb->pkt_type: %+v %v; bit %d size %d %v", acc, err, bits, size, berr)
	}
	if _, err := types.FieldAccess("consume_skb", 0, []Step{{"pkt_type", true}, {"x", false}}); err == nil {
		t.Error("skb->pkt_type.x accepted")
	}
	if _, err := types.FieldAccess("vfs_read", 5, nil); !errors.Is(err, ErrUnknownType) {
		t.Errorf("parameter 6 of vfs_read: %v", err)
	}
}

// TestRealMiniFieldAccess checks the mini kernel's BTF offsets against its
// DWARF (vmlinux), which pahole made the BTF from but which debug/dwarf
// reads independently of cilium/ebpf.
func TestRealMiniFieldAccess(t *testing.T) {
	image, smap := realFiles(t, "mini/current/bzImage", "mini/current/System.map")
	k, err := OpenKernel(image, smap)
	if err != nil {
		t.Fatal(err)
	}
	types, err := k.BTF()
	if errors.Is(err, ErrNoBTF) {
		t.Skip("mini kernel without BTF")
	} else if err != nil {
		t.Fatal(err)
	}
	acc, err := types.FieldAccess("vfs_read", 0, vfsReadName)
	if err != nil {
		t.Fatal(err)
	}
	vmlinux, _ := realFiles(t, "mini/current/vmlinux", "mini/current/System.map")
	f, err := elf.Open(vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dw, err := f.DWARF()
	if err != nil {
		t.Fatal(err)
	}
	sym, err := k.Symbols.Lookup("vfs_read")
	if err != nil {
		t.Fatal(err)
	}
	off := dwarfOffsets(t, dw, sym.Addr, [][2]string{{"file", "f_path"}, {"path", "dentry"}, {"dentry", "d_name"}, {"qstr", "name"}})
	want := []uint64{off[0] + off[1], off[2] + off[3]}
	if !reflect.DeepEqual(acc.Offsets, want) || acc.Kind != ValueCharPointer {
		t.Errorf("BTF gives %+v, DWARF offsets %v", acc, want)
	}
	t.Logf("mini: file->f_path.dentry->d_name.name loads at %v", want)
}

// dwarfOffsets finds each struct's direct member offset in the compile
// unit of pc (fs/read_write.c for vfs_read).
func dwarfOffsets(t *testing.T, dw *dwarf.Data, pc uint64, want [][2]string) []uint64 {
	t.Helper()
	r := dw.Reader()
	if _, err := r.SeekPC(pc); err != nil {
		t.Fatalf("compile unit of %#x: %v", pc, err)
	}
	out := make([]uint64, len(want))
	found := 0
	var cur string
	for {
		e, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if e == nil || e.Tag == dwarf.TagCompileUnit {
			break
		}
		switch e.Tag {
		case dwarf.TagStructType:
			cur, _ = e.Val(dwarf.AttrName).(string)
			if !e.Children {
				cur = ""
			}
			continue
		case dwarf.TagMember:
			name, _ := e.Val(dwarf.AttrName).(string)
			for i, w := range want {
				if w[0] == cur && w[1] == name {
					o, _ := e.Val(dwarf.AttrDataMemberLoc).(int64)
					out[i] = uint64(o)
					found |= 1 << i
				}
			}
		case 0:
			cur = ""
		}
		if e.Children {
			r.SkipChildren()
		}
	}
	if found != 1<<len(want)-1 {
		t.Fatalf("DWARF has %b of %v", found, want)
	}
	return out
}
