// Package filter owns the per-disk capture lifecycle inside QEMU: dirty-bitmap
// generations, the NBD target node (reconnect-delay 0), the write-blocking
// mirror job (sync=full, granularity 4096, on-target-error=stop, a named
// filter node), its states (initial-sync, syncing, tracking, resync, paused,
// error), resume after a daemon restart, the resync export and clean detach
// by cancel (never complete).
//
// It does not talk to QMP directly (package qmp does) nor store writes
// (package shipper does).
//
// Status: planned (issue "Capture on running VMs"); nothing here yet.
package filter
