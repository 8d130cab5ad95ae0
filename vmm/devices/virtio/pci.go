package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"sync"

	"github.com/hvprobe/hvprobe/vmm/devices"
)

// Device is what a virtio device type provides to the PCI transport.
type Device interface {
	// ID is the virtio device ID (2 for a block device).
	ID() uint16
	// Class is the PCI class code (class, subclass, prog-if).
	Class() uint32
	// Features are the device-specific feature bits it offers; the
	// transport adds VERSION_1 and EVENT_IDX.
	Features() uint64
	// ReadConfig and WriteConfig access the device-specific
	// configuration at off.
	ReadConfig(off uint64, p []byte)
	WriteConfig(off uint64, p []byte)
	// Queues is the number of virtqueues.
	Queues() int
	// Handle serves one chain of queue q and returns the bytes it wrote
	// to the chain's writable buffers. An error that wraps ErrQueue
	// means the driver broke the queue; others are the device's own and
	// must have been reported to the guest in the request's status.
	Handle(q int, c Chain) (written uint32, err error)
}

// Feature bits the transport owns (virtio 1.2, 6).
const (
	FeatureEventIdx = 1 << 29
	FeatureVersion1 = 1 << 32
)

// Device status bits (virtio 1.2, 2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 0x40
	StatusFailed      = 0x80
)

// The BAR 0 layout: each structure in a page of its own.
const (
	barSize      = 0x8000
	commonOff    = 0x0000
	commonLen    = 0x40
	isrOff       = 0x1000
	isrLen       = 4
	deviceOff    = 0x2000
	deviceLen    = 0x1000
	notifyOff    = 0x3000
	notifyMult   = 4
	msixTableOff = 0x4000
	msixPBAOff   = 0x5000

	noVector = 0xffff // VIRTIO_MSI_NO_VECTOR

	pciVendorVirtio = 0x1af4
	capVendor       = 0x09 // PCI_CAP_ID_VNDR
	capMSIX         = 0x11 // PCI_CAP_ID_MSIX
)

// virtio_pci_cap cfg_type values.
const (
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
)

// MSI delivers one MSI-X message: KVM_SIGNAL_MSI.
type MSI func(addr uint64, data uint32) error

// PCI is a modern (virtio 1.x, non-transitional) virtio-pci function:
// the common, ISR, device and notify structures and an MSI-X table in
// one 32-bit memory BAR, interrupts as MSI-X only. The driver's notify
// writes wake one goroutine per queue, which serves the chains off the
// vCPU's exit path.
type PCI struct {
	dev  Device
	mem  Memory
	msi  MSI
	name string
	cfg  devices.ConfigSpace

	mu          sync.Mutex
	status      uint8
	generation  uint8
	devSelect   uint32
	drvSelect   uint32
	drvFeatures uint64
	msixConfig  uint16
	queueSel    uint16
	queues      []queueState
	isr         uint8
	msix        []msixEntry
	msixOn      bool
	msixMasked  bool
	broken      bool // NEEDS_RESET is set; logged once per reset
}

type queueState struct {
	size                uint16
	vector              uint16
	enabled             bool
	desc, driver, devic uint64
	q                   *Queue
	kick                chan struct{} // buffered: a pending notify
	stop, done          chan struct{} // nil while no worker runs
}

type msixEntry struct {
	addr    uint64
	data    uint32
	masked  bool
	pending bool
}

// NewPCI makes dev a PCI function with BAR 0 at bar (32 KiB, aligned),
// reaching guest memory through mem and interrupting through msi; name
// labels its log lines.
func NewPCI(dev Device, mem Memory, msi MSI, bar uint32, name string) *PCI {
	p := &PCI{dev: dev, mem: mem, msi: msi, name: name, queues: make([]queueState, dev.Queues())}
	p.msix = make([]msixEntry, dev.Queues()+1) // one per queue and one for config changes
	for i := range p.msix {
		p.msix[i].masked = true
	}
	p.resetLocked()
	c := &p.cfg
	c.Set16(devices.PCIVendorID, pciVendorVirtio)
	c.Set16(devices.PCIDeviceID, 0x1040+dev.ID())
	c.Bytes[devices.PCIRevision] = 1 // non-transitional devices have revision 1 or higher
	cl := dev.Class()
	c.Bytes[devices.PCIClassProg], c.Bytes[devices.PCIClassProg+1], c.Bytes[devices.PCIClassProg+2] = byte(cl), byte(cl>>8), byte(cl>>16)
	c.Set16(devices.PCIStatus, devices.PCIStatusCapList)
	c.Writable16(devices.PCICommand, devices.PCICommandMemory|devices.PCICommandMaster)
	c.Set16(devices.PCISubsysVendor, pciVendorVirtio)
	c.Set16(devices.PCISubsysID, 0x40+dev.ID())
	c.MemoryBAR(0, bar, barSize)
	c.Bytes[devices.PCICapPtr] = 0x40
	caps := []struct {
		typ         byte
		off, length uint32
	}{{capCommon, commonOff, commonLen}, {capNotify, notifyOff, notifyMult * uint32(len(p.queues))}, {capISR, isrOff, isrLen}, {capDevice, deviceOff, deviceLen}}
	at := 0x40
	for _, cp := range caps {
		n := 16
		if cp.typ == capNotify {
			n = 20
		}
		c.Bytes[at], c.Bytes[at+1], c.Bytes[at+2], c.Bytes[at+3] = capVendor, byte(at+n), byte(n), cp.typ
		c.Bytes[at+4] = 0 // BAR 0
		c.Set32(at+8, cp.off)
		c.Set32(at+12, cp.length)
		if cp.typ == capNotify {
			c.Set32(at+16, notifyMult)
		}
		at += n
	}
	// MSI-X: table size N-1, table and PBA in BAR 0; enable and function
	// mask are the writable bits.
	c.Bytes[at], c.Bytes[at+1] = capMSIX, 0
	c.Set16(at+2, uint16(len(p.msix)-1))
	c.Writable16(at+2, 0xc000)
	c.Set32(at+4, msixTableOff)
	c.Set32(at+8, msixPBAOff)
	msixCtl := at + 3 // the byte holding enable (bit 7) and function mask (bit 6)
	c.OnWrite = func(off int) {
		if off == msixCtl {
			p.mu.Lock()
			v := c.Bytes[msixCtl]
			p.msixOn, p.msixMasked = v&0x80 != 0, v&0x40 != 0
			p.deliverPendingLocked()
			p.mu.Unlock()
		}
	}
	return p
}

// Config is the function's configuration space (devices.PCIFunction).
func (p *PCI) Config() *devices.ConfigSpace { return &p.cfg }

// MMIO is an access to BAR 0 (devices.PCIFunction).
func (p *PCI) MMIO(bar int, off uint64, data []byte, write bool) {
	if !write {
		for i := range data {
			data[i] = 0
		}
	}
	switch {
	case off < commonOff+commonLen:
		p.common(off-commonOff, data, write)
	case off >= isrOff && off < isrOff+isrLen:
		if !write && off == isrOff {
			p.mu.Lock()
			data[0], p.isr = p.isr, 0 // reading clears it
			p.mu.Unlock()
		}
	case off >= deviceOff && off < deviceOff+deviceLen:
		if write {
			p.dev.WriteConfig(off-deviceOff, data)
		} else {
			p.dev.ReadConfig(off-deviceOff, data)
		}
	case off >= notifyOff && off < notifyOff+notifyMult*uint64(len(p.queues)):
		if write {
			p.notify(int((off - notifyOff) / notifyMult))
		}
	case off >= msixTableOff && off < msixTableOff+16*uint64(len(p.msix)):
		p.msixTable(off-msixTableOff, data, write)
	case off >= msixPBAOff && off < msixPBAOff+8:
		if !write {
			p.mu.Lock()
			var pba uint64
			for i, e := range p.msix {
				if e.pending {
					pba |= 1 << i
				}
			}
			p.mu.Unlock()
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], pba)
			copy(data, b[off-msixPBAOff:])
		}
	}
}

// common is struct virtio_pci_common_cfg.
func (p *PCI) common(off uint64, data []byte, write bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var v uint64
	if write {
		var b [8]byte
		copy(b[:], data)
		v = binary.LittleEndian.Uint64(b[:])
	}
	var q *queueState
	if int(p.queueSel) < len(p.queues) {
		q = &p.queues[p.queueSel]
	}
	out := func(x uint64) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], x)
		copy(data, b[:])
	}
	// 64-bit queue addresses arrive as two 32-bit halves.
	half := func(field *uint64, hi bool) {
		shift := uint(0)
		if hi {
			shift = 32
		}
		if write {
			if q != nil && !q.enabled {
				*field = *field&^(0xffffffff<<shift) | uint64(uint32(v))<<shift
			}
			return
		}
		out(*field >> shift & 0xffffffff)
	}
	switch off {
	case 0: // device_feature_select
		if write {
			p.devSelect = uint32(v)
		} else {
			out(uint64(p.devSelect))
		}
	case 4: // device_feature
		if !write && p.devSelect < 2 {
			out(p.features() >> (32 * p.devSelect) & 0xffffffff)
		}
	case 8: // driver_feature_select
		if write {
			p.drvSelect = uint32(v)
		} else {
			out(uint64(p.drvSelect))
		}
	case 12: // driver_feature
		if p.drvSelect >= 2 {
			return
		}
		shift := 32 * uint(p.drvSelect)
		if write && p.status&StatusFeaturesOK == 0 {
			p.drvFeatures = p.drvFeatures&^(0xffffffff<<shift) | uint64(uint32(v))<<shift
		} else if !write {
			out(p.drvFeatures >> shift & 0xffffffff)
		}
	case 16: // msix_config
		if write {
			p.msixConfig = p.vectorOrNone(uint16(v))
		} else {
			out(uint64(p.msixConfig))
		}
	case 18: // num_queues
		if !write {
			out(uint64(len(p.queues)))
		}
	case 20: // device_status
		if write {
			p.setStatusLocked(uint8(v))
		} else {
			out(uint64(p.status))
		}
	case 21: // config_generation
		if !write {
			out(uint64(p.generation))
		}
	case 22: // queue_select
		if write {
			p.queueSel = uint16(v)
		} else {
			out(uint64(p.queueSel))
		}
	case 24: // queue_size
		if q == nil {
			return
		}
		if write && !q.enabled {
			q.size = uint16(v)
		} else if !write {
			out(uint64(q.size))
		}
	case 26: // queue_msix_vector
		if q == nil {
			if !write {
				out(noVector)
			}
			return
		}
		if write {
			q.vector = p.vectorOrNone(uint16(v))
		} else {
			out(uint64(q.vector))
		}
	case 28: // queue_enable
		if q == nil {
			return
		}
		if write && v == 1 && !q.enabled {
			p.enableLocked(int(p.queueSel))
		} else if !write && q.enabled {
			out(1)
		}
	case 30: // queue_notify_off
		if q != nil && !write {
			out(uint64(p.queueSel))
		}
	case 32, 36:
		if q != nil {
			half(&q.desc, off == 36)
		}
	case 40, 44:
		if q != nil {
			half(&q.driver, off == 44)
		}
	case 48, 52:
		if q != nil {
			half(&q.devic, off == 52)
		}
	}
}

func (p *PCI) features() uint64 { return p.dev.Features() | FeatureVersion1 | FeatureEventIdx }

// vectorOrNone accepts an MSI-X table index, else answers NO_VECTOR, as
// the driver checks by reading the field back.
func (p *PCI) vectorOrNone(v uint16) uint16 {
	if int(v) < len(p.msix) {
		return v
	}
	return noVector
}

// setStatusLocked is a device_status write: 0 resets the device;
// FEATURES_OK sticks only for features the device offered, with
// VERSION_1.
func (p *PCI) setStatusLocked(v uint8) {
	if v == 0 {
		p.resetLocked()
		return
	}
	if v&StatusFeaturesOK != 0 && p.status&StatusFeaturesOK == 0 {
		if p.drvFeatures&^p.features() != 0 || p.drvFeatures&FeatureVersion1 == 0 {
			v &^= StatusFeaturesOK
		}
	}
	p.status = v | p.status&StatusNeedsReset
}

// resetLocked stops the queue workers and forgets all driver state.
func (p *PCI) resetLocked() {
	p.stopWorkersLocked()
	p.status, p.drvFeatures, p.devSelect, p.drvSelect = 0, 0, 0, 0
	p.msixConfig, p.queueSel, p.isr, p.broken = noVector, 0, 0, false
	for i := range p.queues {
		p.queues[i] = queueState{size: MaxQueueSize, vector: noVector}
	}
}

// Close stops the queue workers; the device serves nothing after it.
func (p *PCI) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopWorkersLocked()
}

func (p *PCI) stopWorkersLocked() {
	for i := range p.queues {
		q := &p.queues[i]
		if q.stop != nil {
			close(q.stop)
			done := q.done
			q.stop = nil
			p.mu.Unlock() // the worker may be waiting for mu to interrupt
			<-done
			p.mu.Lock()
		}
	}
}

// enableLocked checks queue i's size and starts its worker.
func (p *PCI) enableLocked(i int) {
	s := &p.queues[i]
	q, err := NewQueue(p.mem, s.size, s.desc, s.driver, s.devic, p.drvFeatures&FeatureEventIdx != 0)
	if err != nil {
		p.breakLocked(err)
		return
	}
	s.q, s.enabled = q, true
	s.kick, s.stop, s.done = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go p.serve(i, s.q, s.kick, s.stop, s.done)
}

// notify is the driver's kick of queue i: it wakes the worker and
// returns to the guest at once.
func (p *PCI) notify(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i < len(p.queues) && p.queues[i].stop != nil {
		select {
		case p.queues[i].kick <- struct{}{}:
		default: // already woken: it will see this chain too
		}
	}
}

// serve drains queue i whenever kicked: every available chain is handled
// and returned, then the event index asks for the next kick, and the
// ring is checked once more so that a chain added in between is not
// left waiting.
func (p *PCI) serve(i int, q *Queue, kick, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case <-kick:
		}
		for {
			select {
			case <-stop: // a reset: the rings may be gone
				return
			default:
			}
			served, err := p.drain(i, q)
			if err == nil {
				err = q.SetAvailEvent()
			}
			var more bool
			if err == nil {
				more, err = q.Pending()
			}
			if err != nil {
				p.mu.Lock()
				p.breakLocked(err)
				p.mu.Unlock()
				return
			}
			if served {
				p.interruptQueue(i, q)
			}
			if !more {
				break
			}
		}
	}
}

func (p *PCI) drain(i int, q *Queue) (served bool, err error) {
	for {
		c, ok, err := q.Pop()
		if err != nil || !ok {
			return served, err
		}
		n, err := p.dev.Handle(i, c)
		if errors.Is(err, ErrQueue) {
			return served, err
		}
		if err := q.Push(c.Head, n); err != nil {
			return served, err
		}
		served = true
	}
}

func (p *PCI) interruptQueue(i int, q *Queue) {
	need, err := q.NeedsInterrupt()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.breakLocked(err)
		return
	}
	if need {
		p.isr |= 1
		p.signalLocked(p.queues[i].vector)
	}
}

// breakLocked is the driver breaking a queue: NEEDS_RESET and a config
// interrupt, as the spec asks, and one log line until the next reset.
func (p *PCI) breakLocked(err error) {
	if p.broken {
		return
	}
	p.broken = true
	log.Printf("hvprobe: %s: %v: the device needs a reset", p.name, err)
	p.status |= StatusNeedsReset
	p.generation++
	p.isr |= 2
	p.signalLocked(p.msixConfig)
}

// signalLocked sends MSI-X vector v, or marks it pending while masked.
func (p *PCI) signalLocked(v uint16) {
	if int(v) >= len(p.msix) || !p.msixOn {
		return // no vector, or MSI-X off: hvprobe offers no INTx
	}
	e := &p.msix[v]
	if e.masked || p.msixMasked {
		e.pending = true
		return
	}
	if err := p.msi(e.addr, e.data); err != nil {
		log.Printf("hvprobe: %s: MSI-X vector %d: %v", p.name, v, err)
	}
}

func (p *PCI) deliverPendingLocked() {
	for i := range p.msix {
		if p.msix[i].pending && !p.msix[i].masked && !p.msixMasked && p.msixOn {
			p.msix[i].pending = false
			p.signalLocked(uint16(i))
		}
	}
}

// msixTable is an access to the MSI-X table: 16 bytes per entry, message
// address, data and vector control (bit 0 masks).
func (p *PCI) msixTable(off uint64, data []byte, write bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := &p.msix[off/16]
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[0:], e.addr)
	binary.LittleEndian.PutUint32(raw[8:], e.data)
	if e.masked {
		raw[12] = 1
	}
	at := off % 16
	if int(at)+len(data) > len(raw) {
		return
	}
	if !write {
		copy(data, raw[at:])
		return
	}
	copy(raw[at:], data)
	e.addr, e.data, e.masked = binary.LittleEndian.Uint64(raw[0:]), binary.LittleEndian.Uint32(raw[8:]), raw[12]&1 != 0
	p.deliverPendingLocked()
}

// String names the device for logs.
func (p *PCI) String() string { return fmt.Sprintf("%s (virtio %d)", p.name, p.dev.ID()) }
