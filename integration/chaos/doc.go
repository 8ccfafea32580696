// Package chaos is qcdp's chaos suite: a long, seeded, randomized schedule
// of faults against the real components, and the checks that every
// promise of README's "What qcdp promises under faults" holds after each.
// The runner is TestChaos in package integration (it reuses that
// package's daemons and fake systemd); this package holds what it is made
// of: the schedule and the fault table (schedule.go), the fault-injecting
// TCP proxy between the host and the replica (link.go), the replica's
// storage in a mount namespace of the suite's own (storage.go), damage to
// files at rest (damage.go), the model of the guest's workload across its
// boots (model.go), a reader of the journal's records to tell an open
// finding's signature (journal.go), the findings (findings.go) and
// the summary (report.go).
//
// `make test` runs the short version (seed 1, 30 faults, every kind at
// least once, about two and a half minutes here); `make chaos` the long
// one (1000 faults, about an hour): `make chaos SEED=... FAULTS=...
// KINDS=...` replays a run, as its summary says.
//
// # The world
//
// The test guest (integration/guest: a Debian cloud kernel, the
// project's /init running the verifiable workload of package workload at
// 100 writes/s on two disks, vda qcow2 8 MiB and vdb raw 16 MiB, fsyncing
// every 10 writes and saying so on its console), `qcdp host` protecting it
// through its QMP socket under a fake systemd with WatchdogSec=3s, a spool
// of 64 MiB in 1 MiB segments, streaming over mTLS through the suite's
// Link to `qcdp replica`, whose storage_root is a 1 GiB tmpfs only it sees
// (retention window 2 minutes). The suite has a QMP monitor of its own to
// pause the guest, quit it, and write through its device (HMP qemu-io).
//
// # The schedule
//
// A seed draws rounds. The first rounds draw every kind once, in a random
// order; then kinds are drawn by weight. A solo kind has a round of its
// own; the others share a round with up to two more kinds of other
// resources (the link, each daemon, the replica's storage), each starting
// at its own offset and healing after its own hold, so that faults
// overlap. About nine rounds in ten are cheap, so that 1000 faults fit
// in an hour under TCG.
//
// # The fault kinds
//
//	kind                 weight  solo  what
//	link-cut                140        reset every host-replica connection, refuse new ones, 0.3-3 s
//	link-partition           80        hold every byte, connections kept, 0.5-4 s
//	link-delay               70        20-400 ms each way, 1-4 s
//	link-squeeze             70        32 KiB/s-1 MiB/s each way, 1-4 s
//	replica-kill            120        kill -9 qcdp replica, start it again after 0-2 s
//	replica-stop             90        SIGSTOP it 0.5-4 s
//	host-kill                80        kill -9 qcdp host, start it again after 0-1.5 s
//	host-stop                80        SIGSTOP it 0.5-5 s: past 3 s the watchdog kills it and the suite restarts it
//	replica-fs-full          40        fill the replica's tmpfs with ballast for 1-4 s
//	spool-full               20   yes  cut the link, write 80 MiB through the guest's device into the 64 MiB spool
//	vm-poweroff               8   yes  power the guest off from its console, boot it again (a new workload seed)
//	vm-quit                   8   yes  QMP quit, boot again
//	vm-kill                  12   yes  kill -9 QEMU, boot again
//	journal-flip             10   yes  quiesce, stop the replica, flip a bit of a segment or layer, start it
//	journal-truncate          5   yes  the same, cutting the file short
//	journal-index-flip        5   yes  the same on an index file (a cache: it must be rebuilt, not reported)
//	spool-flip                4   yes  unsent records in the spool, stop the host, flip a bit of a segment not the last
//	spool-truncate            3   yes  the same, cutting it short
//	clock-step               50        step qcdp host's wall clock 1 min-48 h back or ahead for 1-4 s, then back
//
// Damage lands on the last segment's tail only where it is corruption by
// the formats' own rules: the spool's last segment may lose a torn tail
// by design, so spool damage avoids it; the journal is damaged after a
// quiesce, so all of it is acknowledged.
//
// # The checks, after every round
//
//   - The guest: no QCDP-ERROR, QEMU alive, no gap between two fsyncs on
//     its console longer than the bound (1 s plus a second of slack, or
//     WatchdogSec + 1 s where a hung host daemon overlaps it), the
//     suite's own pauses taken out; at each clean end of a boot its own
//     longest write under WatchdogSec + 1 s; every burst write completed
//     in the source.
//   - Convergence: the guest paused, within 2 minutes every disk is back
//     to syncing, the stream connected, RPO 0 (every seq acknowledged and
//     in the replica's window); the newest point's views, read with
//     nbdcopy, equal the source disks byte for byte and are the guest's
//     state after its last fsync.
//   - Restore points: 1-2 sampled per round from the window, half of them
//     at the edges of its gaps (where a bracket begins or ends), each one
//     state of the workload model of the boot its time falls in (or an
//     earlier boot's, if no later boot had fsync'd anything by then)
//     holding every write fsync'd before its time.
//   - Corruption: `qcdp verify` (or `qcdp spool verify` and `qcdp host`'s
//     refusal) names the damaged file; no view serves a wrong byte (the
//     newest view equals the source, sampled views are states of the
//     guest, or their reads fail); then the group is repaired (journal
//     aside, or spool and journal aside, and the disks re-attached) and
//     must converge. A new spool must be refused as diverged, never
//     spliced.
//
// The first finding ends the run: it prints the round, the fault, the
// check, the seed, and keeps the working directory (chaos.log, every
// daemon's log in start order, each boot's console and QEMU log, and
// at-failure/ with the replica's points and journal and the host's status
// and spool as they were).
//
// # Findings
//
// A finding of the suite with a narrow signature is listed in Findings.
// While it is open, every run fails on it like on any other, unless asked
// to count it instead (QCDP_CHAOS_OPEN=count, `make chaos OPEN=count`):
// its summary then says how often each was seen. Once fixed, its
// signature seen again fails every run as a regression. F1-F3 are fixed.
package chaos
