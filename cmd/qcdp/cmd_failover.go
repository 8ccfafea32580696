package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/failover"
	"github.com/qcdp/qcdp/replica/journal"
)

// failoverOptions are the flags of `qcdp failover ...`.
type failoverOptions struct {
	groupOptions
	pointOptions
	wait bool
}

func newFailoverCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "start a group's VMs at the recovery site: test, start, planned, commit, undo, cleanup, status",
		Long: `Starts standby libvirt domains of a protection group's VMs at the recovery site,
from any restore point, in seconds whatever the disk size: each disk is a qcow2
overlay over the replica's read-only view of the point, so nothing is copied
before the VMs boot. The group's [[recovery]] plan in the replica policy says
where (libvirt URI, standby_dir), on which networks, in which order.

  test      standbys (<vm>-qcdp-test) on the isolated test network; replication
            goes on undisturbed. End it with cleanup.
  start     unplanned failover: the group is fenced (the replica refuses its
            stream, and tells the host why), then the standbys start on the
            production networks.
  prepare   on the protected host: shut the group's VMs down cleanly, mark the
            final point and wait until the replica holds it.
  planned   zero data loss: after prepare, fence and start from exactly the
            final point.
  commit    make it permanent: pull every disk onto local storage while the
            standbys run; afterwards they need nothing of the replica daemon.
  undo      before commit: destroy the standbys, discard their writes, and let
            the group replicate again from where it was.
  cleanup   end a test failover, leaving nothing behind.
  status    the standbys, their point, networks and commit progress.`,
		Example: `  qcdp failover test web            # then: qcdp failover cleanup web
  qcdp failover start web --ago 2m   # unplanned, from two minutes ago
  qcdp failover commit web --wait
  qcdp failover status web --json`,
		Args: noArgs,
	}
	var opts failoverOptions
	run := func(use, short, example string, withPoint bool, fn func(ctx context.Context, c *replicaClient, group string, at *journal.Target, out io.Writer) error) *cobra.Command {
		sub := &cobra.Command{
			Use: use, Short: short, Long: failoverLong[strings.Fields(use)[0]], Example: example, Args: positional("GROUP"),
			RunE: func(cmd *cobra.Command, args []string) error {
				var at *journal.Target
				if withPoint && (opts.seq != 0 || !opts.at.IsZero() || opts.agoSet || opts.bookmark != "") {
					t, err := opts.target(time.Now())
					if err != nil {
						return err
					}
					at = &t
				}
				return fn(cmd.Context(), newReplicaClient(opts.socket), args[0], at, cmd.OutOrStdout())
			},
		}
		if withPoint {
			opts.pointOptions.addFlags(sub.Flags())
		}
		return sub
	}
	started := func(mode failover.Mode) func(ctx context.Context, c *replicaClient, group string, at *journal.Target, out io.Writer) error {
		return func(ctx context.Context, c *replicaClient, group string, at *journal.Target, out io.Writer) error {
			t0 := time.Now()
			st, err := c.Failover(ctx, opts.tenant, group, mode, at)
			if err != nil {
				return err
			}
			if opts.json {
				return printJSON(out, st)
			}
			printState(out, &st)
			fmt.Fprintf(out, "took %s\n", time.Since(t0).Round(time.Millisecond))
			return nil
		}
	}
	commit := run("commit GROUP [--wait]", "pull a failed-over group's disks onto local storage while its standbys run",
		"  qcdp failover commit web\n  qcdp failover commit web --wait --json", false,
		func(ctx context.Context, c *replicaClient, group string, _ *journal.Target, out io.Writer) error {
			if _, err := c.FailoverDo(ctx, opts.tenant, group, "commit"); err != nil {
				return err
			}
			for {
				s, err := c.FailoverStatus(ctx, opts.tenant, group)
				if err != nil {
					return err
				}
				if !opts.wait || s.State == nil || s.Phase == failover.PhaseCommitted {
					if opts.json {
						return printJSON(out, s)
					}
					printState(out, s.State)
					return nil
				}
				if !opts.json {
					fmt.Fprintf(out, "committing: %s\n", commitProgress(s.State))
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Second):
				}
			}
		})
	commit.Flags().BoolVar(&opts.wait, "wait", false, "wait until every disk stands alone, printing progress")
	cmd.AddCommand(
		run("test GROUP [--seq N | --time T | --ago D | --bookmark NAME]", "start test standbys on the isolated network; replication goes on",
			"  qcdp failover test web\n  qcdp failover test web --ago 10m --json", true, started(failover.ModeTest)),
		run("start GROUP [--seq N | --time T | --ago D | --bookmark NAME]", "unplanned failover: fence the group, start its standbys on the production networks",
			"  qcdp failover start web\n  qcdp failover start web --bookmark before-upgrade", true, started(failover.ModeStart)),
		run("planned GROUP", "zero-loss failover from the final point the host marked ('qcdp failover prepare' there)",
			"  qcdp failover planned web", false, started(failover.ModePlanned)),
		newFailoverPrepareCommand(),
		commit,
		run("undo GROUP", "destroy the standbys, discard their writes, replicate again",
			"  qcdp failover undo web", false, func(ctx context.Context, c *replicaClient, group string, _ *journal.Target, out io.Writer) error {
				if _, err := c.FailoverDo(ctx, opts.tenant, group, "undo"); err != nil {
					return err
				}
				fmt.Fprintf(out, "failover of %s undone: standbys destroyed, the group replicates again\n", group)
				return nil
			}),
		run("cleanup GROUP", "end a test failover: nothing is left behind",
			"  qcdp failover cleanup web", false, func(ctx context.Context, c *replicaClient, group string, _ *journal.Target, out io.Writer) error {
				if _, err := c.FailoverDo(ctx, opts.tenant, group, "cleanup"); err != nil {
					return err
				}
				fmt.Fprintf(out, "test failover of %s cleaned up\n", group)
				return nil
			}),
		run("status GROUP", "the group's standbys: state, point, networks, commit progress",
			"  qcdp failover status web\n  qcdp failover status web --json", false, func(ctx context.Context, c *replicaClient, group string, _ *journal.Target, out io.Writer) error {
				s, err := c.FailoverStatus(ctx, opts.tenant, group)
				if err != nil {
					return err
				}
				if opts.json {
					return printJSON(out, s)
				}
				if !s.Active {
					fmt.Fprintf(out, "%s: not failed over\n", group)
					return nil
				}
				printState(out, s.State)
				if s.Error != "" {
					fmt.Fprintf(out, "error: %s\n", s.Error)
				}
				return nil
			}),
	)
	// --socket, --tenant and --json go before or after the subcommand.
	opts.groupOptions.addFlags(cmd.PersistentFlags())
	needSubcommand(cmd)
	return cmd
}

// failoverLong is each subcommand's description.
var failoverLong = map[string]string{
	"test": `Starts a standby of every VM of the group from a restore point (default: the
newest), named <vm>-qcdp-test, on the plan's test networks (an isolated libvirt
network qcdp defines when missing). The group keeps replicating. Each disk is a
qcow2 overlay over the replica's read-only view: the standby's writes never
reach the journal. End it with 'qcdp failover cleanup GROUP'.`,
	"start": `Unplanned failover: fences the group first (the replica refuses its stream from
now on, and a host that reconnects is told the group failed over), then starts
a standby of every VM from the restore point (default: the newest) on the
plan's production networks, in the plan's boot order. 'qcdp failover commit'
makes it permanent; 'qcdp failover undo' takes it back.`,
	"planned": `Zero-loss failover. First run 'qcdp failover prepare GROUP' on the protected
host: it shuts the group's VMs down cleanly, marks the final point and waits
until the replica holds it. Then this fences the group, checks that nothing
was written after the final point, and starts the standbys from exactly it.`,
	"commit": `Makes a failover permanent while its standbys run: libvirt pulls every disk's
data from the replica's view into its overlay in standby_dir. Afterwards the
standbys need nothing of the replica daemon. The group stays fenced.`,
	"undo": `Ends a failover that is not committed: the standbys are destroyed and their
writes discarded, and the group replicates again from where it was.`,
	"cleanup": `Ends a test failover: its standby domains, overlays, view, socket and a test
network qcdp defined are removed. Replication was never disturbed.`,
	"status": `Shows the group's failover: mode, phase, point, whether the group is fenced,
and per standby its state, networks, disks and commit progress.`,
}

func printState(out io.Writer, st *failover.State) {
	if st == nil {
		return
	}
	fmt.Fprintf(out, "%s/%s: %s failover, %s, from seq %d (%s)%s\n", st.Tenant, st.Group, st.Mode, st.Phase,
		st.Point.Seq, st.Point.Time.UTC().Format(time.RFC3339Nano), map[bool]string{true: ", group fenced"}[st.Fenced])
	for _, vm := range st.VMs {
		state := "stopped"
		if vm.Running {
			state = "running"
		}
		fmt.Fprintf(out, "  %s  %s (VM %s)  networks %s", vm.Domain, state, vm.Name, strings.Join(vm.Networks, ","))
		if vm.BootSeconds > 0 {
			fmt.Fprintf(out, "  running after %.2fs", vm.BootSeconds)
		}
		fmt.Fprintln(out)
		for _, d := range vm.Disks {
			c := "on the view"
			if d.Committed {
				c = "committed"
			} else if d.Total > 0 {
				c = fmt.Sprintf("committing %d%%", d.Pulled*100/d.Total)
			}
			fmt.Fprintf(out, "    %s  %s  %s  %s\n", d.Target, d.Disk, c, d.Overlay)
		}
		if vm.PostBoot != "" {
			fmt.Fprintf(out, "    post_boot: %s\n", vm.PostBoot)
		}
	}
}

func commitProgress(st *failover.State) string {
	var done, total uint64
	for _, vm := range st.VMs {
		for _, d := range vm.Disks {
			if d.Committed {
				done += d.Size
				total += d.Size
			} else {
				done += d.Pulled
				total += max(d.Total, d.Size)
			}
		}
	}
	if total == 0 {
		return "starting"
	}
	return fmt.Sprintf("%d%% (%d of %d MiB)", done*100/total, done>>20, total>>20)
}
