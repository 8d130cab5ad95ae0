package devices

import (
	"testing"
	"time"
)

func TestPortBus(t *testing.T) {
	resets := 0
	b := &Bus{Serial: NewSerial(nil, nil), Reset: func() { resets++ }}
	b.CMOS.Now = func() time.Time { return time.Date(2026, 11, 22, 13, 4, 5, 0, time.UTC) }

	b.Out(portI8042Cmd, 0xaa) // some other controller command
	if resets != 0 {
		t.Fatal("non-reset i8042 command reset the guest")
	}
	b.Out(portI8042Cmd, i8042ResetCmd)
	if resets != 1 {
		t.Fatalf("i8042 reset command: %d resets, want 1", resets)
	}
	for _, c := range []struct {
		reg, want uint8
	}{{0x00, 5}, {0x02, 4}, {0x04, 13}, {0x07, 22}, {0x08, 11}, {0x09, 26}, {0x32, 20}} {
		b.Out(portCMOSIndex, c.reg|0x80) // with NMI-disable bit set
		if got := b.In(portCMOSData); got != c.want {
			t.Errorf("CMOS reg %#x = %d, want %d", c.reg, got, c.want)
		}
	}
	if b.In(0x1234) != 0xff {
		t.Error("unknown port should read as 0xff")
	}
	b.Out(portCOM1Base+uartSCR, 0x5a)
	if b.In(portCOM1Base+uartSCR) != 0x5a {
		t.Error("serial scratch register not routed")
	}
}
