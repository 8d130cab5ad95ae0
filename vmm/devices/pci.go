package devices

import (
	"encoding/binary"
	"sync"
)

// PCI configuration mechanism #1 (the 0xCF8 address and 0xCFC data
// ports), which Linux finds with no firmware tables: pci_direct_probe
// checks that 0xCF8 reads back what it wrote, pci_sanity_check looks for
// a host bridge, then the legacy scan walks bus 0.
const (
	portPCIAddr    = 0xcf8
	portPCIAddrEnd = 0xcfb
	portPCIData    = 0xcfc
	portPCIDataEnd = 0xcff

	pciEnable = 1 << 31 // the address register's enable bit
)

// Standard configuration header offsets and bits (include/uapi/linux/pci_regs.h).
const (
	PCIVendorID      = 0x00
	PCIDeviceID      = 0x02
	PCICommand       = 0x04
	PCIStatus        = 0x06
	PCIRevision      = 0x08
	PCIClassProg     = 0x09
	PCIHeaderType    = 0x0e
	PCIBAR0          = 0x10
	PCISubsysVendor  = 0x2c
	PCISubsysID      = 0x2e
	PCICapPtr        = 0x34
	PCIInterruptLine = 0x3c
	PCIInterruptPin  = 0x3d

	PCICommandMemory = 0x2
	PCICommandMaster = 0x4
	PCIStatusCapList = 0x10
)

// PCIFunction is one function on bus 0: its 256-byte configuration space
// and the memory BARs that space decodes.
type PCIFunction interface {
	// Config is the function's configuration space; the bus reads and
	// writes it a byte at a time, as the port accesses arrive.
	Config() *ConfigSpace
	// MMIO is an access to BAR bar at offset off: a read fills data.
	MMIO(bar int, off uint64, data []byte, write bool)
}

// ConfigSpace is a configuration space as bytes with a mask of the bits
// the guest may write; OnWrite, when set, is told of each written byte
// after the mask is applied (BAR moves, MSI-X enable).
type ConfigSpace struct {
	Bytes    [256]byte
	Writable [256]byte
	OnWrite  func(off int)
	bars     [6]uint32 // sizes of 32-bit memory BARs, 0 for none
}

// Set16 and Set32 store read-only fields little-endian.
func (c *ConfigSpace) Set16(off int, v uint16) { binary.LittleEndian.PutUint16(c.Bytes[off:], v) }
func (c *ConfigSpace) Set32(off int, v uint32) { binary.LittleEndian.PutUint32(c.Bytes[off:], v) }

// Get16 and Get32 read fields little-endian.
func (c *ConfigSpace) Get16(off int) uint16 { return binary.LittleEndian.Uint16(c.Bytes[off:]) }
func (c *ConfigSpace) Get32(off int) uint32 { return binary.LittleEndian.Uint32(c.Bytes[off:]) }

// Writable16 makes the bits of mask at off guest-writable.
func (c *ConfigSpace) Writable16(off int, mask uint16) {
	binary.LittleEndian.PutUint16(c.Writable[off:], mask)
}

// MemoryBAR makes BAR i a 32-bit non-prefetchable memory BAR of size
// bytes (a power of two, at least 16) placed at addr, as firmware would
// have assigned it; Linux keeps an assignment it finds.
func (c *ConfigSpace) MemoryBAR(i int, addr, size uint32) {
	c.bars[i] = size
	off := PCIBAR0 + 4*i
	c.Set32(off, addr)
	// The low 4 bits (memory, 32-bit, not prefetchable) are fixed; the
	// address bits below size read as zero, which is how the guest sizes it.
	binary.LittleEndian.PutUint32(c.Writable[off:], ^(size - 1))
}

// BAR is where BAR i is placed and its size (0 when there is none).
func (c *ConfigSpace) BAR(i int) (addr uint64, size uint64) {
	return uint64(c.Get32(PCIBAR0+4*i) &^ 0xf), uint64(c.bars[i])
}

func (c *ConfigSpace) write(off int, v byte) {
	c.Bytes[off] = c.Bytes[off]&^c.Writable[off] | v&c.Writable[off]
	if c.OnWrite != nil {
		c.OnWrite(off)
	}
}

// PCI is bus 0 with a host bridge at 00.0 and functions at devices 1
// and up, function 0 each. It decodes the functions' memory BARs, for
// MMIO exits, while their command register enables memory space.
type PCI struct {
	mu    sync.Mutex
	addr  uint32
	funcs []PCIFunction // funcs[0] is the host bridge
}

// NewPCI returns the bus with its host bridge: Red Hat's generic PCIe
// host bridge IDs (QEMU's gpex), which no Linux quirk matches (an Intel
// 440FX's trigger quirk_natoma); pci_sanity_check accepts it by class.
func NewPCI() *PCI {
	hb := &hostBridge{}
	c := &hb.cfg
	c.Set16(PCIVendorID, 0x1b36)
	c.Set16(PCIDeviceID, 0x0008)
	c.Bytes[PCIClassProg+2] = 0x06 // bridge
	c.Bytes[PCIClassProg+1] = 0x00 // host bridge
	return &PCI{funcs: []PCIFunction{hb}}
}

// Add puts f at the next device number and returns it.
func (p *PCI) Add(f PCIFunction) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.funcs = append(p.funcs, f)
	return len(p.funcs) - 1
}

// function is the function the address register selects, or nil.
func (p *PCI) function() (PCIFunction, int) {
	if p.addr&pciEnable == 0 {
		return nil, 0
	}
	bus, dev, fn := p.addr>>16&0xff, int(p.addr>>11&0x1f), p.addr>>8&0x7
	if bus != 0 || fn != 0 || dev >= len(p.funcs) {
		return nil, 0
	}
	return p.funcs[dev], int(p.addr & 0xfc)
}

func (p *PCI) in(port uint16) uint8 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if port <= portPCIAddrEnd {
		return uint8(p.addr >> (8 * (port - portPCIAddr)))
	}
	f, reg := p.function()
	if f == nil {
		return 0xff // no device: the vendor ID reads as 0xffff
	}
	return f.Config().Bytes[reg+int(port-portPCIData)]
}

func (p *PCI) out(port uint16, v uint8) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if port <= portPCIAddrEnd {
		shift := 8 * (port - portPCIAddr)
		p.addr = p.addr&^(0xff<<shift) | uint32(v)<<shift
		return
	}
	if f, reg := p.function(); f != nil {
		f.Config().write(reg+int(port-portPCIData), v)
	}
}

// MMIO routes an access at guest-physical addr to the function whose
// enabled memory BAR holds it; false when none does.
func (p *PCI) MMIO(addr uint64, data []byte, write bool) bool {
	p.mu.Lock()
	var hit PCIFunction
	var bar int
	var off uint64
	for _, f := range p.funcs[1:] {
		c := f.Config()
		if c.Get16(PCICommand)&PCICommandMemory == 0 {
			continue
		}
		for i := range c.bars {
			base, size := c.BAR(i)
			if size != 0 && addr >= base && addr+uint64(len(data)) <= base+size {
				hit, bar, off = f, i, addr-base
			}
		}
	}
	p.mu.Unlock()
	if hit == nil {
		return false
	}
	hit.MMIO(bar, off, data, write)
	return true
}

type hostBridge struct{ cfg ConfigSpace }

func (h *hostBridge) Config() *ConfigSpace           { return &h.cfg }
func (h *hostBridge) MMIO(int, uint64, []byte, bool) {}
