// Package guest builds and boots the test guest that qcdp's end-to-end
// tests protect: a Debian cloud kernel and an initramfs whose /init is the
// project's own static Go program (integration/guest/init), which runs the
// verifiable write workload of package workload on virtio-blk disks and
// reports over the serial console.
//
// It owns getting the kernel (apt-get download, once per machine, into a
// shared cache guarded by a lock file), building /init and the initramfs
// (again whenever the program changes), starting QEMU under TCG with the
// disks as -blockdev nodes tests can mirror, and reading the console.
//
// It does not own the workload's format or the checks of disk images
// (package workload), QMP (package qmp) nor qcdp itself.
//
// Build and Start return errors, for the demo and the benchmark; Boot takes
// a testing.TB, stops QEMU in t.Cleanup and prints its logs when the test
// failed.
package guest
