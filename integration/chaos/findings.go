package chaos

// OpenFinding is a finding of this suite whose fix is not in yet. A run
// fails on it unless it is asked to count open findings instead (the
// short run in `make test` does, so that CI stays green while the rest of
// the suite keeps checking; the summary says how often each was seen).
// Only the finding's own narrow signature is counted: every other check
// stays as strict. Remove an entry once its fix is in.
type OpenFinding struct {
	ID   string
	What string
	// Workaround is what the suite does to go on after seeing it.
	Workaround string
}

// OpenFindings are the open findings, by ID.
var OpenFindings = []OpenFinding{
	{"F1", "the documented repair of a corrupt journal (stop the replica, move the journal aside, start it, re-attach the disks) " +
		"never resumes the stream: the new journal holds seq 0, the host's intact spool no longer retains seq 1, and the sender " +
		"retries \"resync needed\" forever; re-attaching does not help",
		"move the host's spool aside too (a new spool starts at seq 1), then the journal again, and re-attach"},
	{"F2", "the host re-declares the group's disks (a Members record) when it starts and when it attaches a VM, before it opens " +
		"the brackets of the re-copies: the journal offers that record as a restore point stamped at the re-declaration, " +
		"holding the last state captured before a daemon restart or a VM restart but not the writes the guest fsync'd " +
		"meanwhile, which nobody captured (invariant 3)",
		"none needed: the point is counted and the check goes on"},
	{"F3", "a re-attach starts the mirror's copy before it writes the disk's resync-begin marker (filter: attach runs " +
		"blockdev-mirror, then the state machine marks the bracket), so the first copy records can reach the stream outside " +
		"any bracket: the journal offers the boundaries after them as restore points, a copy that is no write log " +
		"(invariant 2) stamped after writes it lacks (invariant 3); with two disks the second's early copy is masked by the " +
		"first's bracket, a one-disk group has no such luck",
		"none needed: the point is counted and the check goes on"},
}

// Open returns the open finding id.
func Open(id string) OpenFinding {
	for _, f := range OpenFindings {
		if f.ID == id {
			return f
		}
	}
	panic("chaos: no open finding " + id)
}
