package vmm

import (
	"errors"
	"fmt"

	"github.com/hvprobe/hvprobe/vmm/devices"
	"github.com/hvprobe/hvprobe/vmm/devices/virtio"
)

// Disk is a raw image file the guest sees as a virtio-blk disk (vda,
// vdb, … in order).
type Disk struct {
	Path     string
	ReadOnly bool
}

// DiskStats are what one disk served.
type DiskStats struct {
	Name                          string // vda, vdb, …
	Path                          string
	Reads, Writes, Flushes, Other uint64
	BytesRead, BytesWritten       uint64
}

// Requests is every request the disk served.
func (s DiskStats) Requests() uint64 { return s.Reads + s.Writes + s.Flushes + s.Other }

// CheckDisk refuses a disk that attachDisks would, before anything is
// created: a missing or non-regular file, a size that is not whole
// sectors, a file that cannot be opened for writing without ReadOnly.
func CheckDisk(d Disk) error {
	f, err := virtio.OpenDisk(d.Path, d.ReadOnly)
	if err != nil {
		return err
	}
	return f.Close()
}

// pciMMIOBase is where the devices' BARs go: above the most RAM hvprobe
// gives a guest (maxMem), below the local and I/O APICs, each 32 KiB BAR
// aligned to its size as firmware would place it.
const pciMMIOBase = 0xe0000000

type disk struct {
	cfg Disk
	blk *virtio.Blk
	pci *virtio.PCI
}

// attachDisks opens the configured disks and puts each on a PCI bus of
// its own making, as a virtio-pci function.
func (vm *VM) attachDisks() error {
	if len(vm.cfg.Disks) == 0 {
		return nil
	}
	if len(vm.cfg.Disks) > 16 {
		return fmt.Errorf("%w: %d disks; at most 16", ErrBadConfig, len(vm.cfg.Disks))
	}
	bus := devices.NewPCI()
	for i, d := range vm.cfg.Disks {
		name := "vd" + string(rune('a'+i))
		f, err := virtio.OpenDisk(d.Path, d.ReadOnly)
		if err != nil {
			return fmt.Errorf("disk %s: %w", name, err)
		}
		blk, err := virtio.NewBlk(f, d.ReadOnly, "hvprobe-"+name, vm.mem)
		if err != nil {
			f.Close()
			return fmt.Errorf("disk %s: %w", name, err)
		}
		p := virtio.NewPCI(blk, vm.mem, vm.signalMSI, pciMMIOBase+uint32(i)*0x8000, name)
		vm.disks = append(vm.disks, &disk{cfg: d, blk: blk, pci: p})
		bus.Add(p)
	}
	vm.handler.bus.PCI = bus
	return nil
}

// signalMSI is an MSI-X message from a device: KVM_SIGNAL_MSI, which the
// in-kernel local APIC delivers.
func (vm *VM) signalMSI(addr uint64, data uint32) error {
	if !vm.life.enter() {
		return ErrClosed
	}
	defer vm.life.exit()
	m := kvmMSI{AddressLo: uint32(addr), AddressHi: uint32(addr >> 32), Data: data}
	return ioctlPtr(vm.vmFD, kvmSignalMSI, &m)
}

// closeDisks stops the devices' queue workers and closes the images.
func (vm *VM) closeDisks() error {
	var errs []error
	for _, d := range vm.disks {
		d.pci.Close()
		errs = append(errs, d.blk.Close())
	}
	return errors.Join(errs...)
}

// Disks are the disks' request counts so far.
func (vm *VM) Disks() []DiskStats {
	var out []DiskStats
	for i, d := range vm.disks {
		s := d.blk.Stats()
		out = append(out, DiskStats{Name: "vd" + string(rune('a'+i)), Path: d.cfg.Path,
			Reads: s.Reads.Load(), Writes: s.Writes.Load(), Flushes: s.Flushes.Load(), Other: s.Other.Load(),
			BytesRead: s.BytesRead.Load(), BytesWritten: s.BytesWritten.Load()})
	}
	return out
}
