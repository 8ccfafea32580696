// Package integration holds qcdp's end-to-end tests: real QEMU (TCG, no
// guest), real qemu-img, qemu-io, qemu-nbd, nbdkit and libnbd tools, and
// qcdp's own NBD server and spool on unix sockets. Tests install what they
// need when run as root (Debian packages) and skip otherwise; they stop only
// the processes they started.
//
// The harness lives in integration/harness; `go run ./integration/demo`
// tells the capture story end to end and `go run ./integration/bench`
// measures the capture export against qemu-nbd and nbdkit.
//
// Set QCDP_KEEP=1 to keep the working directory of a failed test.
package integration
