package vmm

import "fmt"

// ReservedRegion is hvprobe's private guest-physical region at the top of
// RAM (boot.go reserves it through a setup_data node): the kernel never
// allocates from it but keeps it in its direct map. Its layout, low to
// high:
//
//	header    one page: the setup_data node that makes the kernel reserve it
//	slots     instruction slots, up to the doorbell page
//	doorbell  one page: the int3 doorbell (doorbell.go), on hosts that need it
//	tables    ReservedTablePages pages for the page tables that map slots
//	          and doorbell into the kernel's address space
//
// Slots and doorbell are contiguous, so one virtual range maps both.
type ReservedRegion struct {
	Start, Size uint64 // the whole region, header included
}

// ReservedTablePages is how many pages are kept for the page tables that
// map the slot area: one page table covers 2 MiB; the rest stand in for
// missing intermediate levels.
const ReservedTablePages = 3

// reservedHeader is the setup_data node's page that opens the region.
const reservedHeader = 0x1000

// Mapped is the range to map into the kernel: slots then the doorbell page.
func (r ReservedRegion) Mapped() (gpa, size uint64) {
	gpa = r.Start + reservedHeader
	return gpa, r.tables() - gpa
}

// Slots is the slot range, at the start of Mapped.
func (r ReservedRegion) Slots() (gpa, size uint64) {
	gpa, size = r.Mapped()
	return gpa, size - pageSize
}

// DoorbellOffset is where the doorbell page sits in Mapped.
func (r ReservedRegion) DoorbellOffset() uint64 {
	_, size := r.Slots()
	return size
}

func (r ReservedRegion) tables() uint64 { return r.Start + r.Size - ReservedTablePages*pageSize }

// TableAllocator hands out the region's page-table pages, zeroed, in
// order; reset makes the next call start over (a failed mapping attempt
// gives its pages back).
func (r ReservedRegion) TableAllocator(mem PhysMem) (alloc func() (uint64, error), reset func()) {
	next := r.tables()
	alloc = func() (uint64, error) {
		if next >= r.Start+r.Size {
			return 0, fmt.Errorf("slot page tables: the %d pages of the reserved region are used up", ReservedTablePages)
		}
		p := next
		next += pageSize
		return p, mem.WritePhys(p, make([]byte, pageSize))
	}
	return alloc, func() { next = r.tables() }
}
