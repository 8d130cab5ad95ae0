package devices

import (
	"io"
	"sync"
)

// Serial is a 16550A UART at one I/O base (0x3f8 for ttyS0): enough of it
// for Linux's 8250 driver to probe, print, take input and use its
// interrupt. Transmitted bytes go to Out; Input queues received bytes.
type Serial struct {
	mu     sync.Mutex
	out    io.Writer
	raise  func(level bool) // drives the UART's IRQ line
	rx     []byte
	ier    uint8
	lcr    uint8
	mcr    uint8
	scr    uint8
	dll    uint8
	dlm    uint8
	thrIRQ bool // THR-empty interrupt pending (cleared by reading IIR or writing THR)
	line   bool
}

// 16550 register offsets and bits (include/uapi/linux/serial_reg.h).
const (
	uartRX, uartTX, uartDLL = 0, 0, 0
	uartIER, uartDLM        = 1, 1
	uartIIR, uartFCR        = 2, 2
	uartLCR                 = 3
	uartMCR                 = 4
	uartLSR                 = 5
	uartMSR                 = 6
	uartSCR                 = 7

	ierRDI  = 0x01
	ierTHRI = 0x02

	iirNoInt  = 0x01
	iirTHRI   = 0x02
	iirRDI    = 0x04
	iirFIFOOn = 0xc0

	lcrDLAB = 0x80

	lsrDR   = 0x01
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	mcrLoop = 0x10
)

// NewSerial returns a UART writing to out; raise sets its IRQ line level.
func NewSerial(out io.Writer, raise func(level bool)) *Serial {
	return &Serial{out: out, raise: raise}
}

// Input queues bytes for the guest to read and raises the RX interrupt.
func (s *Serial) Input(p []byte) {
	s.mu.Lock()
	s.rx = append(s.rx, p...)
	s.updateIRQ()
	s.mu.Unlock()
}

// Read handles an IN from port base+off.
func (s *Serial) Read(off uint16) uint8 {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch off {
	case uartRX:
		if s.lcr&lcrDLAB != 0 {
			return s.dll
		}
		if len(s.rx) == 0 {
			return 0
		}
		b := s.rx[0]
		s.rx = s.rx[1:]
		s.updateIRQ()
		return b
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			return s.dlm
		}
		return s.ier
	case uartIIR:
		v := uint8(iirNoInt)
		switch {
		case s.ier&ierRDI != 0 && len(s.rx) > 0:
			v = iirRDI
		case s.ier&ierTHRI != 0 && s.thrIRQ:
			v = iirTHRI
			s.thrIRQ = false // reading IIR acknowledges THRE
		}
		s.updateIRQ()
		return v | iirFIFOOn
	case uartLCR:
		return s.lcr
	case uartMCR:
		return s.mcr
	case uartLSR:
		v := uint8(lsrTHRE | lsrTEMT)
		if len(s.rx) > 0 {
			v |= lsrDR
		}
		return v
	case uartMSR:
		if s.mcr&mcrLoop != 0 {
			// Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD. The 8250
			// probe checks this.
			m := s.mcr
			return (m&0x1)<<5 | (m&0x2)<<3 | (m&0x4)<<4 | (m&0x8)<<4
		}
		return 0xb0 // DCD, DSR, CTS: a cable is there
	case uartSCR:
		return s.scr
	}
	return 0
}

// Write handles an OUT to port base+off.
func (s *Serial) Write(off uint16, v uint8) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch off {
	case uartTX:
		if s.lcr&lcrDLAB != 0 {
			s.dll = v
			return
		}
		if s.mcr&mcrLoop != 0 {
			s.rx = append(s.rx, v)
		} else if s.out != nil {
			s.out.Write([]byte{v}) // console output loss is not the guest's problem
		}
		s.thrIRQ = true
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			s.dlm = v
			return
		}
		if v&ierTHRI != 0 && s.ier&ierTHRI == 0 {
			s.thrIRQ = true // enabling THRI with an empty THR interrupts at once
		}
		s.ier = v & 0x0f
	case uartFCR:
		// FIFOs are always on; clearing the RX FIFO is honoured.
		if v&0x02 != 0 {
			s.rx = nil
		}
	case uartLCR:
		s.lcr = v
	case uartMCR:
		s.mcr = v
	case uartSCR:
		s.scr = v
	}
	s.updateIRQ()
}

func (s *Serial) updateIRQ() {
	level := (s.ier&ierRDI != 0 && len(s.rx) > 0) || (s.ier&ierTHRI != 0 && s.thrIRQ)
	if level != s.line {
		s.line = level
		if s.raise != nil {
			s.raise(level)
		}
	}
}

// SerialState is the UART's registers and unread input, for snapshots.
type SerialState struct {
	RX                           []byte
	IER, LCR, MCR, SCR, DLL, DLM uint8
	THRIRQ, Line                 bool
}

// State returns the UART's state.
func (s *Serial) State() SerialState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SerialState{RX: append([]byte(nil), s.rx...), IER: s.ier, LCR: s.lcr, MCR: s.mcr,
		SCR: s.scr, DLL: s.dll, DLM: s.dlm, THRIRQ: s.thrIRQ, Line: s.line}
}

// SetState loads a saved state. The IRQ line's level is part of the
// in-kernel irqchip state restored with it, so it is not driven again.
func (s *Serial) SetState(st SerialState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rx = append([]byte(nil), st.RX...)
	s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm = st.IER, st.LCR, st.MCR, st.SCR, st.DLL, st.DLM
	s.thrIRQ, s.line = st.THRIRQ, st.Line
}
