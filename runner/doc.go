// Package runner is one `hvprobe run` or `hvprobe check`, and `list` and
// `show`: what the command line asks for, orchestrated over session.
//
// Order, so that bad input changes nothing: Config.Validate refuses every
// flag and file problem that needs no kernel, all at once; then the probe
// lines are parsed, wildcards expanded and every probe judged against the
// kernel image (session.ImageKernel), all refusals at once; only then are
// output files created and a VM made. Every refusal is exit status 2
// (Refusals, ExitRefused); errors carry their exit status (Code).
//
// Streams: events, hist tables and counts go to the events printer
// (stdout or --events); hvprobe's own lines go to stderr; the guest
// console to stderr or --console. Printers never block a vCPU thread
// (output.go).
package runner
