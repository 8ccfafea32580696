// Package replica is the recovery site: the receiver of each group's stream
// (mTLS, one stream per protection group), the journal of checksummed
// segments with its index, base images, restore points, retention and
// point-in-time views served read-only over NBD (package nbd).
//
// Status: planned (issue "The replica"); nothing here yet. The record format
// it will journal is package record, shared with the host's spool.
package replica
