package main

import (
	"context"

	"github.com/spf13/cobra"
)

func newDetachCommand() *cobra.Command {
	return newVMCommand("detach", true, &cobra.Command{
		Use:   "detach VM [--disk vda]",
		Short: "cleanly end capture of a VM (cancel, never complete)",
		Long: `Cleanly ends capture of a VM, or of one of its disks: its mirror jobs are cancelled,
never completed; it is not protected again until 'qcdp attach VM' or its next
start. VM is its name, UUID or id. Under libvirt, detach before a snapshot,
blockresize or backup, and attach after.`,
		Example: "  qcdp detach vm1\n  qcdp detach vm1 --disk vda\n  qcdp detach vm1 --disk vm1.vdb --json",
	}, func(ctx context.Context, c *hostClient, o vmOptions) error { return c.Detach(ctx, o.vm, o.disk) })
}
