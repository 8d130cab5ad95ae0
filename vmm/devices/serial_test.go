package devices

import (
	"bytes"
	"testing"
)

func TestSerialTransmitAndInterrupts(t *testing.T) {
	var out bytes.Buffer
	var levels []bool
	s := NewSerial(&out, func(l bool) { levels = append(levels, l) })

	for _, b := range []byte("hi\n") {
		s.Write(uartTX, b)
	}
	if out.String() != "hi\n" {
		t.Fatalf("transmitted %q, want %q", out.String(), "hi\n")
	}
	if len(levels) != 0 {
		t.Fatalf("IRQ raised with interrupts disabled: %v", levels)
	}
	if lsr := s.Read(uartLSR); lsr&lsrTHRE == 0 || lsr&lsrDR != 0 {
		t.Fatalf("LSR = %#x: want THRE set, DR clear", lsr)
	}

	s.Write(uartIER, ierTHRI)
	if len(levels) != 1 || !levels[0] {
		t.Fatalf("enabling THRI did not raise the line: %v", levels)
	}
	if iir := s.Read(uartIIR); iir&0x0f != iirTHRI {
		t.Fatalf("IIR = %#x, want THRI", iir)
	}
	if levels[len(levels)-1] {
		t.Fatalf("reading IIR did not acknowledge THRE")
	}
	if iir := s.Read(uartIIR); iir&0x0f != iirNoInt {
		t.Fatalf("second IIR read = %#x, want no interrupt", iir)
	}

	s.Write(uartIER, ierRDI)
	s.Input([]byte("ab"))
	if !levels[len(levels)-1] {
		t.Fatal("input did not raise RX interrupt")
	}
	if iir := s.Read(uartIIR); iir&0x0f != iirRDI {
		t.Fatalf("IIR = %#x, want RDI", iir)
	}
	if a, b := s.Read(uartRX), s.Read(uartRX); a != 'a' || b != 'b' {
		t.Fatalf("read %q%q", a, b)
	}
	if levels[len(levels)-1] {
		t.Fatal("RX interrupt still raised with empty FIFO")
	}
}

func TestSerialDivisorLatchAndLoopback(t *testing.T) {
	var out bytes.Buffer
	s := NewSerial(&out, nil)
	s.Write(uartLCR, lcrDLAB|0x03)
	s.Write(uartDLL, 0x01)
	s.Write(uartDLM, 0x00)
	if s.Read(uartDLL) != 1 || s.Read(uartDLM) != 0 {
		t.Fatal("divisor latch not readable back")
	}
	s.Write(uartLCR, 0x03)
	if out.Len() != 0 {
		t.Fatal("divisor writes leaked to the console")
	}
	// The 8250 probe: loopback with RTS|OUT2 must read back CTS|DCD.
	s.Write(uartMCR, mcrLoop|0x0a)
	if msr := s.Read(uartMSR) & 0xf0; msr != 0x90 {
		t.Fatalf("loopback MSR = %#x, want 0x90", msr)
	}
	s.Write(uartTX, 'x')
	if out.Len() != 0 || s.Read(uartRX) != 'x' {
		t.Fatal("loopback byte did not come back on RX")
	}
}
