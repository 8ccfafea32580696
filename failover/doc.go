// Package failover provisions standby libvirt domains on the recovery site
// and runs test, planned and unplanned failover, commit and undo, and
// failback without a full copy.
//
// Status: planned; nothing here yet.
package failover
