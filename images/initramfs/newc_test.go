package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"testing"
)

// entry is one parsed newc entry.
type entry struct {
	name                 string
	ino, mode, nlink     uint32
	uid, gid, mtime      uint32
	rdevmajor, rdevminor uint32
	data                 string
}

// readNewc parses a whole newc archive the way the kernel's init/initramfs.c
// does, and checks what the kernel relies on: magic, hex fields, 4-byte
// alignment of names, data and the end, and a final trailer. The trailer is
// not returned.
func readNewc(t testing.TB, b []byte) []entry {
	t.Helper()
	if len(b)%4 != 0 {
		t.Fatalf("archive length %d not 4-byte aligned", len(b))
	}
	var out []entry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+headerSize > len(b) {
			t.Fatalf("truncated header at %d", off)
		}
		h := b[off : off+headerSize]
		if string(h[:6]) != magic {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("field %d at %d: %v", i, off, err)
			}
			f[i] = uint32(v)
		}
		namesize, filesize := int(f[11]), int(f[6])
		if f[12] != 0 {
			t.Fatalf("check field %#x, want 0", f[12])
		}
		nameEnd := off + headerSize + namesize
		if namesize == 0 || nameEnd > len(b) || b[nameEnd-1] != 0 {
			t.Fatalf("bad name at %d (namesize %d)", off, namesize)
		}
		name := string(b[off+headerSize : nameEnd-1])
		dataOff := align(nameEnd)
		if dataOff+filesize > len(b) {
			t.Fatalf("%q: truncated data", name)
		}
		for _, p := range b[nameEnd:dataOff] {
			if p != 0 {
				t.Fatalf("%q: nonzero name padding", name)
			}
		}
		e := entry{
			name: name, ino: f[0], mode: f[1], uid: f[2], gid: f[3],
			nlink: f[4], mtime: f[5], rdevmajor: f[9], rdevminor: f[10],
			data: string(b[dataOff : dataOff+filesize]),
		}
		off = align(dataOff + filesize)
		if name == trailer {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestWriter(t *testing.T) {
	type op func(w *Writer) error
	tests := []struct {
		name string
		ops  []op
		want []entry
	}{
		{
			name: "empty",
		},
		{
			name: "console",
			ops: []op{
				func(w *Writer) error { return w.CharDev("/dev/console", 0o600, 5, 1) },
			},
			want: []entry{
				{name: "dev", ino: 1, mode: 0o40755, nlink: 2},
				{name: "dev/console", ino: 2, mode: 0o20600, nlink: 1, rdevmajor: 5, rdevminor: 1},
			},
		},
		{
			name: "file padding 0..4",
			ops: []op{
				func(w *Writer) error { return w.File("a", 0o644, nil) },
				func(w *Writer) error { return w.File("bb", 0o644, []byte("1")) },
				func(w *Writer) error { return w.File("ccc", 0o644, []byte("12")) },
				func(w *Writer) error { return w.File("dddd", 0o644, []byte("123")) },
				func(w *Writer) error { return w.File("eeeee", 0o755, []byte("1234")) },
			},
			want: []entry{
				{name: "a", ino: 1, mode: 0o100644, nlink: 1},
				{name: "bb", ino: 2, mode: 0o100644, nlink: 1, data: "1"},
				{name: "ccc", ino: 3, mode: 0o100644, nlink: 1, data: "12"},
				{name: "dddd", ino: 4, mode: 0o100644, nlink: 1, data: "123"},
				{name: "eeeee", ino: 5, mode: 0o100755, nlink: 1, data: "1234"},
			},
		},
		{
			name: "symlink, special bits, nested parents",
			ops: []op{
				func(w *Writer) error { return w.Symlink("usr/bin/sh", "busybox") },
				func(w *Writer) error { return w.Dir("tmp", 0o777|fs.ModeSticky) },
				func(w *Writer) error { return w.File("./su", 0o755|fs.ModeSetuid|fs.ModeSetgid, []byte("x")) },
				func(w *Writer) error { return w.BlockDev("vda", 0o660, 254, 0) },
			},
			want: []entry{
				{name: "usr", ino: 1, mode: 0o40755, nlink: 2},
				{name: "usr/bin", ino: 2, mode: 0o40755, nlink: 2},
				{name: "usr/bin/sh", ino: 3, mode: 0o120777, nlink: 1, data: "busybox"},
				{name: "tmp", ino: 4, mode: 0o41777, nlink: 2},
				{name: "su", ino: 5, mode: 0o106755, nlink: 1, data: "x"},
				{name: "vda", ino: 6, mode: 0o60660, nlink: 1, rdevmajor: 254},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			for i, op := range tt.ops {
				if err := op(w); err != nil {
					t.Fatalf("op %d: %v", i, err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			got := readNewc(t, buf.Bytes())
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("entries:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestTrailerBytes pins the exact bytes of an empty archive: one trailer
// header, "TRAILER!!!\0" and padding to 124 bytes.
func TestTrailerBytes(t *testing.T) {
	var buf bytes.Buffer
	if err := NewWriter(&buf).Close(); err != nil {
		t.Fatal(err)
	}
	want := "070701" + "00000000" + "00000000" + "00000000" + "00000000" +
		"00000001" + "00000000" + "00000000" + "00000000" + "00000000" +
		"00000000" + "00000000" + "0000000b" + "00000000" + "TRAILER!!!\x00" + "\x00\x00\x00"
	if buf.String() != want {
		t.Errorf("got %q\nwant %q", buf.String(), want)
	}
}

func TestWriterErrors(t *testing.T) {
	tests := []struct {
		name string
		op   func(w *Writer) error
		want error
	}{
		{"root", func(w *Writer) error { return w.Dir("/", 0o755) }, ErrInvalidName},
		{"empty", func(w *Writer) error { return w.File("", 0o644, nil) }, ErrInvalidName},
		{"dotdot", func(w *Writer) error { return w.File("a/../../etc", 0o644, nil) }, ErrInvalidName},
		{"nul", func(w *Writer) error { return w.File("a\x00b", 0o644, nil) }, ErrInvalidName},
		{"trailer name", func(w *Writer) error { return w.File(trailer, 0o644, nil) }, ErrInvalidName},
		{"empty symlink", func(w *Writer) error { return w.Symlink("l", "") }, ErrInvalidName},
		{"duplicate", func(w *Writer) error {
			if err := w.File("/a", 0o644, nil); err != nil {
				return err
			}
			return w.File("a", 0o644, nil)
		}, ErrDuplicate},
		{"explicit dir after implicit", func(w *Writer) error {
			if err := w.File("d/f", 0o644, nil); err != nil {
				return err
			}
			return w.Dir("d", 0o755)
		}, ErrDuplicate},
		{"after close", func(w *Writer) error {
			if err := w.Close(); err != nil {
				return err
			}
			return w.File("a", 0o644, nil)
		}, ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op(NewWriter(&bytes.Buffer{}))
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(b []byte) (int, error) {
	if f.n < len(b) {
		n := f.n
		f.n = 0
		return n, errors.New("disk full")
	}
	f.n -= len(b)
	return len(b), nil
}

func TestWriterStickyError(t *testing.T) {
	w := NewWriter(&failWriter{n: 200})
	if err := w.File("a", 0o644, make([]byte, 300)); err == nil {
		t.Fatal("want write error")
	}
	err1 := w.File("b", 0o644, nil)
	err2 := w.Close()
	if err1 == nil || err2 == nil || err1.Error() != err2.Error() {
		t.Errorf("later calls: %v, %v; want the first error again", err1, err2)
	}
}

// FuzzWriter checks that whatever the writer accepts reads back with the
// cleaned name and the exact contents, in a well-formed archive.
func FuzzWriter(f *testing.F) {
	f.Add("init", []byte("#!/bin/sh\n"), "dev/console", []byte{})
	f.Add("/a/b/c", []byte("x"), "a/b", []byte("yy"))
	f.Add("a//./b", []byte{0, 1, 2}, "..", []byte("z"))
	f.Fuzz(func(t *testing.T, name1 string, data1 []byte, name2 string, data2 []byte) {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		want := map[string]string{}
		for _, nd := range []struct {
			name string
			data []byte
		}{{name1, data1}, {name2, data2}} {
			clean, cerr := CleanName(nd.name)
			err := w.File(nd.name, 0o644, nd.data)
			switch {
			case cerr != nil:
				if !errors.Is(err, ErrInvalidName) {
					t.Fatalf("File(%q): %v, want ErrInvalidName", nd.name, err)
				}
			case err == nil:
				want[clean] = string(nd.data)
			case !errors.Is(err, ErrDuplicate):
				// The only other refusal: the name, or one of its
				// parents, was already written.
				t.Fatalf("File(%q): %v", nd.name, err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, e := range readNewc(t, buf.Bytes()) {
			if seen[e.name] {
				t.Fatalf("%q twice", e.name)
			}
			seen[e.name] = true
			if e.mode&0o170000 == modeDir {
				continue
			}
			if got, ok := want[e.name]; !ok || got != e.data {
				t.Fatalf("%q: got %q, want %q (present %v)", e.name, e.data, got, ok)
			}
			delete(want, e.name)
		}
		if len(want) != 0 {
			t.Fatalf("missing %v", want)
		}
	})
}
