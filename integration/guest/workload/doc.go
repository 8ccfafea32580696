// Package workload is the write workload the test guest runs and the
// reference model the host checks disk images against. The guest's /init
// (package integration/guest/init) and the host-side tests share this code,
// so both sides agree on every byte.
//
// The workload is a pure function of its Params: write number seq (1, 2, 3,
// ...; one sequence across all disks of the guest) goes to the disk and block
// that a splitmix64 stream seeded with Params.Seed picks, over a bounded area
// of Params.Blocks blocks per disk, so blocks get overwritten. The host
// replays the same stream (Replay) to know exactly which block held which
// version after any seq, without the guest reporting every write.
//
// It owns the block format, the kernel command line that carries Params, the
// replay, and the checks (History.Verify, History.Locate). It does not own
// booting the guest or reading the serial console (package guest) nor the
// guest's system calls (the init program).
//
// # Block layout (never change; a new layout gets a new magic)
//
// Every write is one self-describing 4 KiB block at offset block*4096 of the
// raw disk, little-endian:
//
//	  0               8      10     12            16
//	  +---------------+------+------+-------------+
//	  | magic         | ver  | disk | CRC32C      |
//	  | "QCDPBLK1"    | 1    | idx  | (see below) |
//	  +---------------+------+------+-------------+
//	 16 | seed (8)                                |
//	 24 | block number (8)                        |
//	 32 | seq of this write (8)                   |
//	 40 | seq of the previous write to this block |
//	    | (8), 0 when this is the first           |
//	 48 +-----------------------------------------+
//	    | payload: 506 splitmix64 words seeded by |
//	    | (seed, seq, block)                      |
//	4096+-----------------------------------------+
//
// The CRC32C (Castagnoli) covers the whole block with its own four bytes
// read as zero. A block of all zero bytes was never written.
//
// # Kernel command line
//
//	qcdp.workload=seed=42,writes=3000,blocks=1024,disks=2,sync=16,rate=0,after=poweroff
//
// writes=0 runs until the host sends "stop" or "poweroff" on the console.
// after=poweroff powers the guest off after QCDP-DONE; after=wait keeps it
// up until "poweroff". See Params for every key.
//
// # Console protocol (guest to host, one line each)
//
//	QCDP-READY disks=N t=NS      modules loaded, disks open, about to write
//	QCDP-SYNCED seq=N t=NS       writes 1..N are durable (fdatasync returned)
//	QCDP-DONE seq=N t=NS         the workload ended after write N, all durable
//	QCDP-ERROR <what>            any error; the guest then powers off
//	QCDP-POWER-BUTTON t=NS       the ACPI power button was pressed: as "poweroff"
//	QCDP-VERIFIED lo=N hi=M t=NS with qcdp.verify=1: the disks hold one state (package failover's standbys)
//	QCDP-MARKED block=B t=NS     ...and the standby wrote past the workload's area
//
// NS is the guest's CLOCK_MONOTONIC in nanoseconds. The host sends
// "stop" (end the workload, stay up) or "poweroff" (end it and power off).
package workload
