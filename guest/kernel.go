package guest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hvprobe/hvprobe/kimage"
)

// Kernel is a guest kernel image together with its System.map.
type Kernel struct {
	Image *kimage.Image
	// Symbols is the unslid table; use Symbols.Slid for a KASLR guest.
	Symbols *SymbolTable
	// BTFPath, when set, is raw BTF to use if the image has no .BTF
	// section (a bzImage built without CONFIG_DEBUG_INFO_BTF, with BTF made
	// from its DWARF by pahole; images/mini does this).
	BTFPath string
	// BTFFirst makes BTFPath win over the image's own .BTF section: the
	// user named the file (hvprobe's --btf).
	BTFFirst bool
	// MapVersion is the release the map's file name names
	// ("System.map-6.1.0-28-cloud-amd64"), "" when it names none.
	MapVersion string

	btfOnce sync.Once
	btf     *Types
	btfErr  error

	patchOnce sync.Once
	patch     *PatchSites
	patchErr  error
}

// OpenKernel reads a kernel image (bzImage or vmlinux) and its System.map,
// and refuses a map that does not belong to the image (see Verify).
func OpenKernel(imagePath, mapPath string) (*Kernel, error) {
	data, err := os.ReadFile(imagePath)
	if err != nil {
		return nil, fmt.Errorf("reading kernel image: %w", err)
	}
	img, err := kimage.Open(data)
	if err != nil {
		return nil, fmt.Errorf("opening kernel image %s: %w", imagePath, err)
	}
	f, err := os.Open(mapPath)
	if err != nil {
		return nil, fmt.Errorf("opening System.map: %w", err)
	}
	defer f.Close()
	syms, err := ParseSystemMap(f)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", mapPath, err)
	}
	k := NewKernel(img, syms)
	k.MapVersion = mapFileVersion(mapPath)
	if p := filepath.Join(filepath.Dir(imagePath), "vmlinux.btf"); fileExists(p) {
		k.BTFPath = p
	}
	if err := k.Verify(); err != nil {
		return nil, fmt.Errorf("checking %s against %s: %w", mapPath, imagePath, err)
	}
	return k, nil
}

// NewKernel ties an image and a symbol table without checking them.
func NewKernel(img *kimage.Image, syms *SymbolTable) *Kernel {
	return &Kernel{Image: img, Symbols: syms.Slid(0)}
}

func mapFileVersion(path string) string {
	v, _ := strings.CutPrefix(filepath.Base(path), "System.map-")
	if v == filepath.Base(path) {
		return ""
	}
	return v
}

// Verify checks that the System.map belongs to the image: the bytes at
// the map's linux_banner, read from the image's segments, must be a
// banner of the image's release. The error is a *MismatchError naming both versions.
func (k *Kernel) Verify() error {
	img := k.Image
	mismatch := func(mapVersion, format string, args ...any) error {
		if mapVersion == "" {
			mapVersion = k.MapVersion
		}
		return &MismatchError{MapVersion: mapVersion, ImageVersion: orUnknown(img.Version), Msg: fmt.Sprintf(format, args...)}
	}
	sym, err := k.Symbols.Lookup("linux_banner")
	if err != nil {
		return mismatch("", "the map has no usable linux_banner: %v", err)
	}
	const maxBanner = 512
	var found []byte
	for n := maxBanner; n > 0 && found == nil; n /= 2 {
		found, _ = img.ReadVirt(sym.Addr, n)
	}
	if found == nil {
		return mismatch("", "linux_banner at %#x is outside the image's loaded segments", sym.Addr)
	}
	if i := bytes.IndexAny(found, "\n\x00"); i >= 0 {
		found = found[:i]
	}
	// A 6.1+ image holds two banners (see kimage.Image.Banner), so the
	// check is that the map's linux_banner is a banner of this release.
	got := string(found)
	if rel := kimage.BannerRelease(got); rel != "" && rel == img.Version {
		return nil
	}
	return mismatch(kimage.BannerRelease(got), "linux_banner at %#x reads %q", sym.Addr, shorten(got))
}

func orUnknown(v string) string {
	if v == "" {
		return "of unknown version"
	}
	return v
}

// BTF returns the kernel's types from its .BTF section, or from BTFPath
// (OpenKernel sets it to a vmlinux.btf beside the image), parsed once. The
// error wraps ErrNoBTF when there is none.
func (k *Kernel) BTF() (*Types, error) {
	k.btfOnce.Do(func() {
		var raw []byte
		err := kimage.ErrNoSection
		if !k.BTFFirst || k.BTFPath == "" {
			raw, err = k.Image.Section(".BTF")
		}
		if errors.Is(err, kimage.ErrNoSection) && k.BTFPath != "" {
			raw, err = os.ReadFile(k.BTFPath)
		}
		if errors.Is(err, kimage.ErrNoSection) {
			k.btfErr = fmt.Errorf("kernel %s: %w", orUnknown(k.Image.Version), ErrNoBTF)
			return
		}
		if err != nil {
			k.btfErr = err
			return
		}
		k.btf, k.btfErr = ParseBTF(raw)
	})
	return k.btf, k.btfErr
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
