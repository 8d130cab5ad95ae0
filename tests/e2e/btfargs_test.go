package e2e

import (
	"path"
	"testing"

	"github.com/hvprobe/hvprobe/kprobes/probedef"
)

// TestBTFFieldArgs: BTF field accesses on the workload's reads. kernel_read
// (what the workload calls) goes to __kernel_read, not vfs_read; both take
// struct file *file first. The file's name comes through
// file->f_path.dentry->d_name.name as a string; every read of it is seen
// at entry and at return, the returns sum to the bytes the workload
// counted, and each open ends in one read returning 0.
func TestBTFFieldArgs(t *testing.T) {
	g := miniGuest(t)
	defs := parseDefs(t,
		`p:bt/rd __kernel_read name=file->f_path.dentry->d_name.name:string count`,
		`r:bt/rret __kernel_read name=$arg1->f_path.dentry->d_name.name:string ret=$retval:s64 ln=file->f_path.dentry->d_name.len`)
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if err != nil {
		t.Fatal(err)
	}
	// Resolved to plain dereferences at the members' offsets; the last
	// one reads the char * that d_name.name is.
	if got, want := defs[0].String(), "p:bt/rd __kernel_read name=+0(+40(+24($arg1))):string count=$arg3"; got != want {
		t.Errorf("resolved %q, want %q", got, want)
	}
	out := g.run(t, "fileread:3")
	fr := report(t, out, "fileread")
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	name := path.Base(fr["path"])
	n, bytes := num(t, fr, "n"), num(t, fr, "bytes")
	var entries, rets, eofs, sum, maxCount int64
	for _, ev := range log.all() {
		if ev.Values[0].Str != name {
			continue
		}
		switch ev.Def.Event {
		case "rd":
			entries++
			maxCount = max(maxCount, int64(ev.Values[1].U64))
		case "rret":
			// d_name.len is a u32, typed from BTF.
			if ev.Values[2].Type.Base != probedef.U32 {
				t.Errorf("d_name.len typed %s", ev.Values[2].Type)
			}
			rets++
			ret := ev.Values[1].S64
			sum += ret
			if ret == 0 {
				eofs++
			}
			if ln := ev.Values[2].U64; ln != uint64(len(name)) {
				t.Errorf("d_name.len %d for %q", ln, name)
			}
		}
	}
	t.Logf("%s: %d reads, %d returns (%d at EOF) summing %d; workload n=%d bytes=%d; largest count %d",
		name, entries, rets, eofs, sum, n, bytes, maxCount)
	if entries == 0 || entries != rets || eofs != n || sum != n*bytes || maxCount*(entries/n-1) < bytes {
		t.Fatalf("%d reads of %s, %d returns, %d at EOF, summing %d: the workload opened it %d times and read %d bytes each",
			entries, name, rets, eofs, sum, n, bytes)
	}
}
