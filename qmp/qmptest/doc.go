// Package qmptest is a QMP peer for tests: a unix socket that speaks QEMU's
// side of the protocol as QEMU 7.2 does (the greeting, capabilities
// negotiation, one JSON object a line, replies in command order, events
// interleaved with them), so a real qmp.Client can be tested against it
// without QEMU and without root.
//
// It owns the socket, the connection and the wire format only. What a
// command does is the test's: a Handler answers each command with the lines
// QEMU would send, its reply first and then the events the command causes.
// A package that needs QEMU's block-job behaviour builds its own simulation
// on a Handler (package filter's tests do).
//
// It does not import package qmp, so qmp's own tests can use it.
package qmptest
