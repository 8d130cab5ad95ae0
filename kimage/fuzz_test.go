package kimage

import (
	"testing"
)

func FuzzOpen(f *testing.F) {
	blob := synthBlob(f)
	for _, m := range []string{"lz4", "gzip", "zstd", "xz"} {
		f.Add(synthBzImage(compressPayload(f, m, blob)))
	}
	f.Add(synthELF(f))
	f.Add(synthBzImage(xzBCJHeader()))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Open(data)
		if err != nil {
			return
		}
		// Whatever parsed must load without panicking.
		ram := make([]byte, 8<<20)
		img.Load(ram, 0, 0)
		if img.Relocs != nil {
			img.Load(ram, 0, PhysicalAlign)
		}
		img.Section(".BTF")
	})
}
