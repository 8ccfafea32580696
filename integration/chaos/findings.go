package chaos

// Finding is a finding of this suite with a narrow signature the runner
// recognizes. An open one (Fixed empty) fails a run unless the run counts
// open findings instead (QCDP_CHAOS_OPEN=count: its summary says how often
// each was seen; every run, the short one in `make test` included, fails
// on them by default). A fixed one is kept so that its
// signature, seen again, is named as the regression it is: it always
// fails. Every other check stays as strict.
type Finding struct {
	ID    string
	What  string
	Fixed string // how it was fixed; empty while open
}

// Open reports whether the finding is still open.
func (f Finding) Open() bool { return f.Fixed == "" }

// Findings are the suite's findings with a signature, by ID.
var Findings = []Finding{
	{"F1", "the documented repair of a corrupt journal did not converge: with the journal moved aside alone, the new " +
		"journal held seq 0, the host's intact spool no longer retained seq 1, and the sender retried \"resync needed\" " +
		"forever; then, with the spool moved aside too but after the replica's restart (the documented order), the old " +
		"spool bound the new journal in between and the new spool was refused as diverged forever",
		"92652c4: replica/receiver/doc.go's order stops the host and moves its spool aside first; the sender names the state diverged"},
	{"F2", "the host declares the group's disks (a Members record) ahead of the adopted captures' resync brackets when it " +
		"starts: the journal offers that record as a restore point stamped at the daemon's start, holding the last state " +
		"captured before the daemon went away but not the writes the guest fsync'd meanwhile, which nobody captured " +
		"(invariant 3). At a VM's attach it was fixed in c0a5cec; 92652c4 keeps KeepMembers from writing it at start, " +
		"but the sequencer's admitLocked still owes the declaration at the first record of every spool session " +
		"(mem.in != sp) and writes it ahead of that record, which is the first resync-begin",
		"03051e3: the kept membership is owed to a restarted daemon's spool session only after its first resync-begin (TestKeepMembers)"},
	{"F3", "a re-attach started the mirror's copy before it wrote the disk's resync-begin marker, so the first copy " +
		"records could reach the stream outside any bracket and be offered as restore points (invariants 2 and 3)",
		"c0a5cec: a (re)declared disk is inside an open resync bracket before its capture copies anything"},
}

// FindingByID returns the finding id.
func FindingByID(id string) Finding {
	for _, f := range Findings {
		if f.ID == id {
			return f
		}
	}
	panic("chaos: no finding " + id)
}
