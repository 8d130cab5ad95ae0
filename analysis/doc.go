// Package analysis is what is done with probedef events on the host
// beyond printing them. ParseFilter parses ftrace's event filter
// grammar (events.rst "Event filtering") against a Def's fields and
// Filter.Match evaluates it on an Event; ParseHist parses an ftrace hist
// trigger (histogram.rst), Hist.Add aggregates events from any number of
// vCPU threads, and Hist.Text and Hist.JSON print the table as ftrace's
// hist file does, with bpftrace-style bars for log2 distributions. A
// comparison on a faulted value is false. Hist takes what Event does not
// carry (a stack, a return probe's duration) through its Stack and
// Duration functions, and symbolizes through Symbols.
//
// Perfetto writes events as a Chrome JSON trace that ui.perfetto.dev
// opens. Set keeps the filters and hists of a session by event name, for
// the command line and the control socket alike.
package analysis
