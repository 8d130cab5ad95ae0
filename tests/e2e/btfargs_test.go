package e2e

import (
	"path"
	"strconv"
	"testing"

	"github.com/hvprobe/hvprobe/bench"
	"github.com/hvprobe/hvprobe/probedef"
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
	// count, a size_t, is typed from BTF as ftrace types it.
	if got, want := defs[0].String(), "p:bt/rd __kernel_read name=+0(+40(+24($arg1))):string count=$arg3:u64"; got != want {
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

// TestBTFBitfields: bitfield members fetched by name read exactly what the
// workload stored, for each call: 3, 9, 1 and 40 bits wide, the last
// starting mid-byte; a bare parameter and $retval are typed from BTF.
func TestBTFBitfields(t *testing.T) {
	g := miniGuest(t)
	defs := parseDefs(t,
		`p:bt/bits hvwl_target_bits lo=b->lo mid=b->mid flag=b->flag wide=b->wide tag=b->tag b`,
		`r:bt/bitsret hvwl_target_bits $retval`)
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	out := g.run(t, "bits:"+strconv.Itoa(n))
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	var want [][]string
	for _, l := range out {
		if r, ok := bench.ParseReport(l); ok && r.What == "bits" {
			want = append(want, []string{r.Fields["lo"], r.Fields["mid"], r.Fields["flag"], r.Fields["wide"], r.Fields["i"]})
		}
	}
	var got [][]string
	var rets []int64
	for _, ev := range log.all() {
		switch ev.Def.Event {
		case "bits":
			var vs []string
			for _, v := range ev.Values[:5] {
				vs = append(vs, strconv.FormatUint(v.U64, 10))
			}
			got = append(got, vs)
			if b := ev.Values[5].Type; b != probedef.DefaultType {
				t.Errorf("b (struct hvwl_bits *) typed %s, want x64", b)
			}
		case "bitsret":
			if ty := ev.Values[0].Type.Base; ty != probedef.S64 {
				t.Errorf("$retval of a long function typed %s, want s64", ty)
			}
			rets = append(rets, ev.Values[0].S64)
		}
	}
	t.Logf("resolved %s; events %v; workload %v; returns %v", defs[0], got, want, rets)
	if len(want) != n || len(got) != n || len(rets) != n {
		t.Fatalf("%d calls reported, %d entry events, %d returns; want %d", len(want), len(got), len(rets), n)
	}
	for i := range want {
		for j := range want[i] {
			if got[i][j] != want[i][j] {
				t.Errorf("call %d: %s = %s, the workload stored %s", i, defs[0].Args[j].Name, got[i][j], want[i][j])
			}
		}
		// lo + mid + flag + tag, as the target computes it.
		var sum int64
		for _, f := range []int{0, 1, 2, 4} {
			v, _ := strconv.ParseInt(want[i][f], 10, 64)
			sum += v
		}
		if rets[i] != sum {
			t.Errorf("call %d returned %d, want %d", i, rets[i], sum)
		}
	}
}
