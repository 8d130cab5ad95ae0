// Package session ties the layers together for one guest: it opens the
// kernel and its System.map (guest), boots it (vmm), follows its console,
// and — once the kernel runs — attaches the probe engine (kprobes) through
// the running-kernel view (introspect). cmd/hvprobe and the e2e tests use
// it; it holds no flags, terminal or output-format knowledge.
//
// Layering: session → kprobes → introspect / guest → vmm.
package session
