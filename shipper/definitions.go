package shipper

import (
	"bytes"
	"fmt"
	"maps"
	"slices"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
)

// definitions are the VM definitions of the group as the sequencer keeps
// them, for the stream's Definition records (package record): the
// recovery site builds a standby of each VM from its newest definition at
// a restore point. Guarded by the sequencer's mu.
type definitions struct {
	cur map[string][]byte // by VM id: the payload of its Definition record, the last given to Define
	// owed holds the VMs whose definition is not in the spool's stream
	// yet (the spool refused it, or this is a new spool session): each
	// is written before the next record.
	owed map[string]bool
	// in is the spool the owed set was last reckoned for: a spool opened
	// again after it broke (Sequencer.reopened) may have lost them, so
	// every definition is written again at the start of every spool
	// session, as the membership is.
	in *spool.Spool
}

// Define appends vm's definition to the stream as a Definition record and
// returns its seq, unless it is the definition last written in this spool
// session (the same bytes): then nothing is written and it returns 0. It
// returns 0 too when the spool refused it: the definition holds all the
// same, and its record is written before the next record the spool takes,
// as an owed membership is. Every definition is written again at the
// start of a new spool session (the spool opened again after it broke). A
// VM that leaves the group's membership (Declare(vm, nil), or Undeclare of
// its last disk) forgets its definition. An error means def is not one a
// Definition record may carry (record.VMDefinition.Validate).
func (s *Sequencer) Define(def record.VMDefinition) (uint64, error) {
	r, err := record.DefinitionRecord(def)
	if err != nil {
		return 0, fmt.Errorf("shipper: define VM %q: %w", def.ID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.defs.sessionLocked(s.sp)
	if !s.defs.owed[def.ID] && bytes.Equal(s.defs.cur[def.ID], r.Payload) {
		return 0, nil
	}
	s.defs.cur[def.ID] = r.Payload
	// Written as r itself, after what is owed before any record.
	delete(s.defs.owed, def.ID)
	seq, err := s.appendLocked(&r)
	if err != nil {
		s.defs.owed[def.ID] = true
		s.logger().Warn("capture: the spool refuses a VM's definition; it is written before the next record", "vm", def.ID, "err", err)
		return 0, nil
	}
	return seq, nil
}

// sessionLocked makes every definition owed when sp is not the spool the
// owed set was reckoned for.
func (d *definitions) sessionLocked(sp *spool.Spool) {
	if d.in == sp {
		return
	}
	d.in = sp
	for id := range d.cur {
		d.owed[id] = true
	}
}

// forgetLocked drops the definitions of the VMs that have no disk in decl.
func (d *definitions) forgetLocked(decl record.Declaration) {
	in := map[string]bool{}
	for _, m := range decl.Disks {
		in[m.VM] = true
	}
	for id := range d.cur {
		if !in[id] {
			delete(d.cur, id)
			delete(d.owed, id)
		}
	}
}

// defineOwedLocked writes the definitions owed, in VM id order.
func (s *Sequencer) defineOwedLocked() error {
	s.defs.sessionLocked(s.sp)
	if len(s.defs.owed) == 0 {
		return nil // the write path: nothing allocated
	}
	for _, id := range slices.Sorted(maps.Keys(s.defs.owed)) {
		p := s.defs.cur[id]
		r := record.Record{Kind: record.Definition, Name: id, Length: uint64(len(p)), Payload: p}
		if _, err := s.put(&r); err != nil {
			return fmt.Errorf("the definition of VM %s owed: %w", id, err)
		}
		delete(s.defs.owed, id)
	}
	return nil
}
