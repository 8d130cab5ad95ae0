package initramfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"path"
	"strings"
)

// Sentinel errors; Writer methods wrap them with the entry's name.
var (
	ErrInvalidName = errors.New("invalid name")
	ErrDuplicate   = errors.New("duplicate name")
	ErrTooLarge    = errors.New("file too large for newc")
	ErrClosed      = errors.New("writer closed")
)

// newc header field layout: the magic, then 13 fields of 8 hex digits.
const (
	magic      = "070701"
	headerSize = len(magic) + 13*8
	trailer    = "TRAILER!!!"
)

// File type bits of the newc mode field (they are the Linux S_IF* values).
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
	modeBlkDev  = 0o060000
)

// Writer writes a newc archive entry by entry. Close writes the trailer.
type Writer struct {
	w      io.Writer
	off    int64 // bytes written so far, for padding
	ino    uint32
	names  map[string]bool
	err    error
	closed bool
}

// NewWriter returns a Writer that writes an uncompressed newc archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, names: map[string]bool{}}
}

// Dir writes a directory; only mode's permission and special bits are used.
func (w *Writer) Dir(name string, mode fs.FileMode) error {
	return w.add(name, modeDir|permBits(mode), 2, 0, 0, nil)
}

// File writes a regular file with the given contents.
func (w *Writer) File(name string, mode fs.FileMode, data []byte) error {
	return w.add(name, modeRegular|permBits(mode), 1, 0, 0, data)
}

// Symlink writes a symbolic link name pointing at target.
func (w *Writer) Symlink(name, target string) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("initramfs: symlink %q target %q: %w", name, target, ErrInvalidName)
	}
	return w.add(name, modeSymlink|0o777, 1, 0, 0, []byte(target))
}

// CharDev writes a character device node, e.g. ("dev/console", 0600, 5, 1).
func (w *Writer) CharDev(name string, mode fs.FileMode, major, minor uint32) error {
	return w.add(name, modeCharDev|permBits(mode), 1, major, minor, nil)
}

// BlockDev writes a block device node.
func (w *Writer) BlockDev(name string, mode fs.FileMode, major, minor uint32) error {
	return w.add(name, modeBlkDev|permBits(mode), 1, major, minor, nil)
}

// Close writes the trailer entry. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	// The trailer is an ordinary header with everything zero but nlink,
	// as GNU cpio writes it.
	w.writeEntry(trailer, 0, 0, 1, 0, 0, nil)
	w.closed = true
	return w.err
}

// permBits maps fs.FileMode's permission and special bits to Unix mode bits.
func permBits(mode fs.FileMode) uint32 {
	m := uint32(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if mode&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// CleanName returns the name the archive stores for name: slash-separated,
// relative, cleaned. It fails for the root itself, for ".." elements and for
// NUL bytes, none of which the kernel can unpack.
func CleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("initramfs: %q: %w", name, ErrInvalidName)
	}
	for _, elem := range strings.Split(name, "/") {
		if elem == ".." {
			return "", fmt.Errorf("initramfs: %q: %w", name, ErrInvalidName)
		}
	}
	clean := strings.TrimLeft(path.Clean("/"+name), "/")
	if clean == "" || clean == trailer {
		return "", fmt.Errorf("initramfs: %q: %w", name, ErrInvalidName)
	}
	return clean, nil
}

func (w *Writer) add(name string, mode, nlink, major, minor uint32, data []byte) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return fmt.Errorf("initramfs: %q: %w", name, ErrClosed)
	}
	clean, err := CleanName(name)
	if err != nil {
		return err
	}
	if w.names[clean] {
		return fmt.Errorf("initramfs: %q: %w", clean, ErrDuplicate)
	}
	if uint64(len(data)) > math.MaxUint32 {
		return fmt.Errorf("initramfs: %q (%d bytes): %w", clean, len(data), ErrTooLarge)
	}
	if err := w.parents(clean); err != nil {
		return err
	}
	w.names[clean] = true
	w.ino++
	w.writeEntry(clean, w.ino, mode, nlink, major, minor, data)
	return w.err
}

// parents writes every missing ancestor directory of name, outermost first.
func (w *Writer) parents(name string) error {
	dir := path.Dir(name)
	if dir == "." || w.names[dir] {
		return nil
	}
	return w.Dir(dir, 0o755)
}

func (w *Writer) writeEntry(name string, ino, mode, nlink, major, minor uint32, data []byte) {
	fields := [13]uint32{
		ino,
		mode,
		0, // uid
		0, // gid
		nlink,
		0,                     // mtime
		uint32(len(data)),     // filesize
		0,                     // devmajor: the archive's own device
		0,                     // devminor
		major,                 // rdevmajor: what a device node names
		minor,                 // rdevminor
		uint32(len(name) + 1), // namesize, with the NUL
		0,                     // check: only used by the "070702" crc format
	}
	hdr := make([]byte, 0, headerSize)
	hdr = append(hdr, magic...)
	for _, f := range fields {
		hdr = fmt.Appendf(hdr, "%08x", f)
	}
	w.write(hdr)
	w.write([]byte(name + "\x00"))
	w.pad()
	w.write(data)
	w.pad()
}

func (w *Writer) write(b []byte) {
	if w.err != nil || len(b) == 0 {
		return
	}
	n, err := w.w.Write(b)
	w.off += int64(n)
	if err != nil {
		w.err = fmt.Errorf("initramfs: writing archive: %w", err)
	}
}

// pad brings the archive to a multiple of 4 bytes, as newc requires after
// the name and after the data.
func (w *Writer) pad() {
	var zero [3]byte
	w.write(zero[:(4-w.off%4)%4])
}
