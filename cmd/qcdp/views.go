package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/qcdp/qcdp/replica/journal"
)

// What the replica operator's commands share (points, export, exports,
// unexport, restore, verify): the replica daemon's socket, how a group is
// named, and how a restore point is.

// groupOptions name the replica daemon and a group's tenant.
type groupOptions struct {
	socket string
	tenant string
	json   bool
}

func (o *groupOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.socket, "socket", "/run/qcdp/replica.sock", "`PATH` of the replica daemon's control socket")
	fs.StringVar(&o.tenant, "tenant", "", "the group's `TENANT` (needed only when several tenants have the group)")
	addJSONFlag(fs, &o.json)
}

// pointOptions name one restore point: exactly one of them is set.
type pointOptions struct {
	seq      uint64
	at       time.Time
	ago      time.Duration
	agoSet   bool
	bookmark string
}

func (o *pointOptions) addFlags(fs *pflag.FlagSet) {
	fs.Var(seqValue{&o.seq}, "seq", "restore point: the state after this seq")
	fs.Var(timeValue{&o.at}, "time", "restore point: the newest at or before this RFC 3339 time")
	fs.Var(durationValue{v: &o.ago, set: &o.agoSet, zero: true}, "ago", "restore point: the newest at or before this long ago, e.g. 5m")
	fs.StringVar(&o.bookmark, "bookmark", "", "restore point: the newest bookmark of this `NAME`")
}

// target is the restore point the flags name, at now.
func (o *pointOptions) target(now time.Time) (journal.Target, error) {
	var t journal.Target
	n := 0
	if o.seq != 0 {
		t.Seq, n = o.seq, n+1
	}
	if !o.at.IsZero() {
		t.Time, n = o.at, n+1
	}
	if o.agoSet {
		t.Time, n = now.Add(-o.ago), n+1
	}
	if o.bookmark != "" {
		t.Bookmark, n = o.bookmark, n+1
	}
	if n != 1 {
		return t, usagef("name exactly one restore point: --seq, --time, --ago or --bookmark")
	}
	return t, nil
}
