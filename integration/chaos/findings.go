package chaos

// Finding is a finding of this suite with a narrow signature the runner
// recognizes. An open one (Fixed empty) fails a run unless the run counts
// open findings instead (the short run in `make test` does, so that CI
// stays green while the rest of the suite keeps checking; its summary
// says how often each was seen). A fixed one is kept so that its
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
	{"F1", "the repair of a corrupt journal by moving the journal aside alone never resumed the stream: the new journal " +
		"held seq 0, the host's intact spool no longer retained seq 1, and the sender retried \"resync needed\" forever",
		"the sender names it as diverged; replica/receiver/doc.go: move the host's spool aside as well, then detach and attach"},
	{"F2", "the host declares the group's disks (a Members record) when it starts, before the brackets of the re-copies " +
		"its adopted jobs owe: the journal offers that record as a restore point stamped at the daemon's start, holding the " +
		"last state captured before the daemon went away but not the writes the guest fsync'd meanwhile, which nobody " +
		"captured (invariant 3). (At a VM's attach this was fixed in c0a5cec.)", ""},
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
