package devices

import "time"

// Port I/O devices the VMM emulates itself. The PIC, PIT and speaker port
// live in KVM's in-kernel irqchip and never exit to us.
const (
	portCOM1Base  = 0x3f8
	portCOM1End   = 0x3ff
	portI8042Data = 0x60
	portI8042Cmd  = 0x64
	portCMOSIndex = 0x70
	portCMOSData  = 0x71

	// COM1IRQ is the ISA IRQ of the UART at 0x3f8.
	COM1IRQ = 4

	i8042ResetCmd = 0xfe // pulse the CPU reset line: Linux's reboot=k
)

// Bus routes port I/O. It reports a guest reset request through
// Reset; everything unknown reads as all-ones and ignores writes, as an
// empty ISA bus does.
type Bus struct {
	Serial *Serial
	CMOS   CMOS
	Reset  func()
	// PCI, when set, is bus 0 behind configuration mechanism #1, with the
	// memory BARs of its functions (MMIO).
	PCI *PCI
}

// In is the guest's inb from port.
func (b *Bus) In(port uint16) uint8 {
	switch {
	case port >= portPCIAddr && port <= portPCIDataEnd && b.PCI != nil:
		return b.PCI.in(port)
	case port >= portCOM1Base && port <= portCOM1End:
		return b.Serial.Read(port - portCOM1Base)
	case port == portI8042Cmd:
		return 0 // output buffer empty, input buffer empty: ready for commands
	case port == portI8042Data:
		return 0
	case port == portCMOSData:
		return b.CMOS.read()
	}
	return 0xff
}

// MMIO is a guest access to guest-physical addr outside RAM; false when
// no device decodes it.
func (b *Bus) MMIO(addr uint64, data []byte, write bool) bool {
	return b.PCI != nil && b.PCI.MMIO(addr, data, write)
}

// Out is the guest's outb of v to port.
func (b *Bus) Out(port uint16, v uint8) {
	switch {
	case port >= portPCIAddr && port <= portPCIDataEnd && b.PCI != nil:
		b.PCI.out(port, v)
	case port >= portCOM1Base && port <= portCOM1End:
		b.Serial.Write(port-portCOM1Base, v)
	case port == portI8042Cmd && v == i8042ResetCmd:
		b.Reset()
	case port == portCMOSIndex:
		b.CMOS.Index = v & 0x7f // bit 7 is the NMI mask
	}
}

// CMOS is a read-only MC146818 RTC in binary, 24-hour mode giving the
// host's UTC time, so the guest's wall clock starts sane. Index is the
// selected register (a snapshot keeps it); Now, when set, replaces
// time.Now.
type CMOS struct {
	Index uint8
	Now   func() time.Time
}

func (c *CMOS) read() uint8 {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	t := now().UTC()
	switch c.Index {
	case 0x00:
		return uint8(t.Second())
	case 0x02:
		return uint8(t.Minute())
	case 0x04:
		return uint8(t.Hour())
	case 0x06:
		return uint8(t.Weekday()) + 1
	case 0x07:
		return uint8(t.Day())
	case 0x08:
		return uint8(t.Month())
	case 0x09:
		return uint8(t.Year() % 100)
	case 0x32:
		return uint8(t.Year() / 100)
	case 0x0a:
		return 0x26 // update not in progress
	case 0x0b:
		return 0x06 // 24-hour, binary
	case 0x0d:
		return 0x80 // time and RAM valid
	}
	return 0
}
