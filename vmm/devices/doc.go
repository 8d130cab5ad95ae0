// Package devices is the emulated hardware the guest reaches through
// exits to hvprobe: a 16550A UART (ttyS0, the console), an i8042 that
// only knows the reset command (Linux's reboot=k), and a read-only CMOS
// clock, routed by port number on Bus. The PIC, PIT and I/O APIC are KVM's
// in-kernel irqchip and never exit. A device knows nothing of KVM: vmm's
// exit loop calls Bus and wires the UART's interrupt line to KVM_IRQ_LINE.
package devices
