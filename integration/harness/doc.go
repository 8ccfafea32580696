// Package harness starts and drives the real components qcdp's integration
// tests, demo and benchmark run against: QEMU (TCG, no guest) with a QMP
// client, qemu-img, qemu-io, qemu-nbd, nbdkit, the qcdp binary, and a
// libvirtd of each test's own in a mount namespace of its own (NeedLibvirtd:
// never the system's, which it leaves alone whether it runs or not).
//
// It owns installing what is missing (Debian packages, as root), starting
// processes with their output in a log file, and stopping exactly the
// processes it started, by PID. On a failed test it prints where to look:
// QEMU's log, the QMP trace and the logs of the servers it started.
//
// It does not own qcdp's behaviour under test: the capture lifecycle it
// drives here (blockdev-add of an NBD target, an active mirror, cancel) is a
// minimal copy of what package filter will own.
//
// Functions that take a testing.TB fail or skip the test; the others return
// errors, for the demo and the benchmark.
package harness
