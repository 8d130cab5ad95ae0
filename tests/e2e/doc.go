// Package e2e boots real guests under KVM and checks hvprobe against
// ground truth the guest prints about itself: the in-kernel workload
// (images/mini/hvprobe_wl.c) calls its target functions a known number of
// times with known arguments and prints what it did. One mini guest is
// booted per test binary in "serve" mode and shared: each test writes a
// scenario into the workload's mailbox and reads the workload's report.
//
// Every test calls kvmtest.RequireKVM: without /dev/kvm the suite skips,
// unless HVPROBE_REQUIRE_KVM is set, when it fails.
package e2e
