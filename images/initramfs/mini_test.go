package initramfs

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestDataText(t *testing.T) {
	b := DataText()
	if len(b) != DataSize || DataSize != 5120 {
		t.Fatalf("len %d, DataSize %d; the README promises 5120", len(b), DataSize)
	}
	if !strings.HasPrefix(string(b), "hvwl-data-line-0000\n") ||
		!strings.HasSuffix(string(b), "hvwl-data-line-0255\n") {
		t.Errorf("unexpected content %q...", b[:40])
	}
}

func TestWriteMini(t *testing.T) {
	tests := []struct {
		name string
		opts MiniOptions
		want []string // names in order
	}{
		{
			name: "kernel only",
			want: []string{"dev", "proc", "sys", "tmp", "hvwl", "dev/console", "hvwl/data.txt"},
		},
		{
			name: "busybox and extra",
			opts: MiniOptions{
				Busybox: []byte("\x7fELF"),
				Extra:   []MiniFile{{Name: "/hvwl/init.sh", Mode: 0o755, Data: []byte("echo hi\n")}},
			},
			want: []string{"dev", "proc", "sys", "tmp", "hvwl", "dev/console", "hvwl/data.txt",
				"bin", "bin/busybox", "bin/sh", "init", "hvwl/init.sh"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a, b bytes.Buffer
			if err := WriteMini(&a, tt.opts); err != nil {
				t.Fatal(err)
			}
			if err := WriteMini(&b, tt.opts); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				t.Error("output not reproducible")
			}
			var names []string
			for _, e := range readNewc(t, a.Bytes()) {
				names = append(names, e.name)
				if e.uid != 0 || e.gid != 0 || e.mtime != 0 {
					t.Errorf("%q: uid %d gid %d mtime %d, want zeros", e.name, e.uid, e.gid, e.mtime)
				}
				switch e.name {
				case "hvwl/data.txt":
					if e.data != string(DataText()) {
						t.Error("data.txt content differs from DataText")
					}
				case "dev/console":
					if e.mode != 0o20600 || e.rdevmajor != 5 || e.rdevminor != 1 {
						t.Errorf("dev/console mode %o rdev %d:%d", e.mode, e.rdevmajor, e.rdevminor)
					}
				case "init":
					if e.data != InitScript || e.mode != 0o100755 {
						t.Errorf("init mode %o", e.mode)
					}
				}
			}
			if strings.Join(names, " ") != strings.Join(tt.want, " ") {
				t.Errorf("names\n got %v\nwant %v", names, tt.want)
			}
		})
	}
}

func TestWriteMiniDuplicateExtra(t *testing.T) {
	err := WriteMini(&bytes.Buffer{}, MiniOptions{Extra: []MiniFile{{Name: DataPath, Mode: 0o644}}})
	if !errors.Is(err, ErrDuplicate) {
		t.Errorf("extra file replacing data.txt: got %v, want ErrDuplicate", err)
	}
}
