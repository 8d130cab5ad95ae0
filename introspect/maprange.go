package introspect

import "github.com/hvprobe/hvprobe/vmm"

// MapRange maps the size bytes at pa to va, page by page (MapPage). On a
// failure it unmaps the pages it mapped and returns the error, leaving the
// tables as they were but for intermediate tables it allocated.
//
// Precondition: vCPUs that could walk these tables are stopped.
func MapRange(mem vmm.PhysMem, cr3 uint64, la57 bool, va, pa, size uint64, flags PTEFlags, allocTable func() (uint64, error)) error {
	for off := uint64(0); off < size; off += uint64(Size4K) {
		if err := MapPage(mem, cr3, la57, va+off, pa+off, flags, allocTable); err != nil {
			for o := uint64(0); o < off; o += uint64(Size4K) {
				UnmapPage(mem, cr3, la57, va+o)
			}
			return err
		}
	}
	return nil
}
