// Package bench drives the mini guest's in-kernel workload
// (images/mini/hvprobe_wl.c) through its mailbox (Mailbox.Scenario) and
// parses its "HVWL:" report lines, and measures probe-hit costs against a
// bare VM exit on one booted guest (Run), for `hvprobe bench`. It sits
// above session: everything it does goes through a Session.
package bench
