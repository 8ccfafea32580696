package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/protect"
)

// failoverPrepareOptions are the flags of `qcdp failover prepare`.
type failoverPrepareOptions struct {
	socket  string
	timeout time.Duration
	agent   bool
	json    bool
	group   string
}

func newFailoverPrepareCommand() *cobra.Command {
	var opts failoverPrepareOptions
	cmd := &cobra.Command{
		Use:   "prepare GROUP [--timeout 5m] [--agent]",
		Short: "on the protected host: shut a group's VMs down and drain its stream for a planned failover",
		Long: `The protected host's half of a zero-loss (planned) failover; it talks to the host
daemon. Every running VM of the group is asked to shut down cleanly (the ACPI
power button, or with --agent its QEMU guest agent); once each has stopped and
its captures have ended, the final point (the bookmark ` + protect.FinalBookmark + `)
goes into the group's stream, and the command returns once the replica holds it:
nothing is lost. Then run 'qcdp failover planned GROUP' at the recovery site.

Each wait (the VMs stopping, the replica holding the final point) is bounded by
--timeout. A VM still running then fails the command, naming it, with nothing
marked: try --agent, or shut it down yourself, and run prepare again. Every
disk of the group must be syncing first (see 'qcdp status'). Planned failover is
for libvirt VMs: a group holding VMs found by their QMP socket is refused (they
leave the group's membership when they stop). Until the recovery site fails the
group over, nothing may follow the final point: the daemon writes no bookmark of
its own, refuses 'qcdp bookmark', and a VM of the group started again ends it.`,
		Example: `  qcdp failover prepare web
  qcdp failover prepare web --timeout 10m --agent
  qcdp failover prepare web --json`,
		Args: positional("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.group = args[0]
			return runFailoverPrepare(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	// Local flags: they shadow the replica's --socket and --json that
	// `qcdp failover` gives its other subcommands.
	addHostSocketFlag(cmd.Flags(), &opts.socket)
	opts.timeout = protect.DefaultPrepareTimeout
	cmd.Flags().Var(durationValue{v: &opts.timeout}, "timeout", "bound of each wait: the VMs stopping, the replica holding the final point")
	cmd.Flags().BoolVar(&opts.agent, "agent", false, "shut the guests down through their QEMU guest agents instead of the ACPI power button")
	addJSONFlag(cmd.Flags(), &opts.json)
	return cmd
}

func runFailoverPrepare(ctx context.Context, opts failoverPrepareOptions, out io.Writer) error {
	res, err := newHostClient(opts.socket).PrepareFailover(ctx, opts.group, opts.timeout, opts.agent)
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, res)
	}
	fmt.Fprintf(out, "group %s prepared for a planned failover in %s\n", opts.group, res.Took.Round(time.Millisecond))
	stopped := "none running"
	if len(res.Stopped) > 0 {
		stopped = strings.Join(res.Stopped, ", ")
	}
	fmt.Fprintf(out, "  VMs stopped: %s\n", stopped)
	fmt.Fprintf(out, "  final point: bookmark %q at seq %d, held by the replica\n", res.Bookmark, res.Seq)
	for _, s := range res.Skipped {
		fmt.Fprintf(out, "  not in the failover: %s\n", s)
	}
	fmt.Fprintf(out, "now run `qcdp failover planned %s` at the recovery site\n", opts.group)
	return nil
}
