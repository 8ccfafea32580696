// Package qmp is qcdp's typed, context-aware client for the QEMU Machine
// Protocol: the commands and events the capture lifecycle uses, and those
// that describe a VM for its standby (machine.go), with the QMP error class
// kept so callers can tell errors apart without reading text.
//
// It owns one QMP connection per Client: the capabilities handshake, command
// execution (one at a time, as QEMU runs them), and the fan-out of
// asynchronous events to any number of subscribers. It does not own what the
// commands mean for a protected disk (package filter) nor finding the monitor
// of a VM (package hypervisor).
//
// # Transport
//
// The Client runs on a transport shaped like go-qemu's qmp.Monitor
// (Run, Events, Disconnect) and uses go-qemu's wire types (qmp.Command,
// qmp.Event). go-qemu's own SocketMonitor cannot be used as is: its Run turns
// an error reply into errors.New(desc), dropping the class, and its line
// scanner fails on replies over 64 KiB (query-named-block-nodes grows past
// that). The unix-socket transport here therefore speaks the same protocol
// but hands the raw reply, error object included, to the Client, which
// decodes it into *Error. A libvirt transport plugs in behind the same
// interface; it must likewise hand back the raw reply. A Client dialed on a
// unix socket also knows the process listening on it (Peer, from the
// kernel's SO_PEERCRED); one over libvirt does not.
//
// # Cancellation
//
// Execute returns ctx.Err() as soon as ctx ends, but QMP cannot withdraw a
// command: QEMU still runs it, and its reply is read and discarded so the next
// command gets its own reply.
//
// # Events
//
// Subscribe registers interest in event names before it returns, so a caller
// that subscribes and then issues a command sees every event the command
// causes. Each subscriber has a buffered channel; a subscriber must keep
// reading until its context ends, because a full channel holds back delivery
// to every subscriber of the Client.
package qmp
