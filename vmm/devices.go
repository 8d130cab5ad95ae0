package vmm

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
	comIRQ        = 4

	i8042ResetCmd = 0xfe // pulse the CPU reset line: Linux's reboot=k
)

// portBus routes port I/O. It reports a guest reset request through
// reset(); everything unknown reads as all-ones and ignores writes, as an
// empty ISA bus does.
type portBus struct {
	serial *Serial
	cmos   cmos
	reset  func()
}

func (b *portBus) in(port uint16) uint8 {
	switch {
	case port >= portCOM1Base && port <= portCOM1End:
		return b.serial.Read(port - portCOM1Base)
	case port == portI8042Cmd:
		return 0 // output buffer empty, input buffer empty: ready for commands
	case port == portI8042Data:
		return 0
	case port == portCMOSData:
		return b.cmos.read()
	}
	return 0xff
}

func (b *portBus) out(port uint16, v uint8) {
	switch {
	case port >= portCOM1Base && port <= portCOM1End:
		b.serial.Write(port-portCOM1Base, v)
	case port == portI8042Cmd && v == i8042ResetCmd:
		b.reset()
	case port == portCMOSIndex:
		b.cmos.index = v & 0x7f // bit 7 is the NMI mask
	}
}

// cmos is a read-only MC146818 RTC in binary, 24-hour mode giving the
// host's UTC time, so the guest's wall clock starts sane.
type cmos struct {
	index uint8
	now   func() time.Time
}

func (c *cmos) read() uint8 {
	now := time.Now
	if c.now != nil {
		now = c.now
	}
	t := now().UTC()
	switch c.index {
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
