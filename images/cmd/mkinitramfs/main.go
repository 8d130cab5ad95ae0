package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hvprobe/hvprobe/images/initramfs"
)

// addFlags collects repeated -add host=guest flags.
type addFlags []initramfs.MiniFile

func (a *addFlags) String() string { return fmt.Sprint(len(*a), " files") }

func (a *addFlags) Set(v string) error {
	host, guest, ok := strings.Cut(v, "=")
	if !ok || host == "" || guest == "" {
		return fmt.Errorf("want host=guest, got %q", v)
	}
	data, err := os.ReadFile(host)
	if err != nil {
		return err
	}
	st, err := os.Stat(host)
	if err != nil {
		return err
	}
	*a = append(*a, initramfs.MiniFile{Name: guest, Mode: st.Mode().Perm(), Data: data})
	return nil
}

func main() {
	out := flag.String("o", "", "output path (required)")
	busybox := flag.String("busybox", "/bin/busybox", `static busybox to include as /bin/busybox with /init; "" for none`)
	var extra addFlags
	flag.Var(&extra, "add", "host=guest: add a host file to the image (repeatable)")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*out, *busybox, extra); err != nil {
		fmt.Fprintln(os.Stderr, "mkinitramfs:", err)
		os.Exit(1)
	}
}

func run(out, busybox string, extra []initramfs.MiniFile) error {
	opts := initramfs.MiniOptions{Extra: extra}
	if busybox != "" {
		bb, err := os.ReadFile(busybox)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			fmt.Fprintf(os.Stderr, "mkinitramfs: %s not found; image has no /init\n", busybox)
		case err != nil:
			return err
		default:
			opts.Busybox = bb
		}
	}
	var buf bytes.Buffer
	if err := initramfs.WriteMini(&buf, opts); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
