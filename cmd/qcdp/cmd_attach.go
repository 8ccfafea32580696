package main

import (
	"context"

	"github.com/spf13/cobra"
)

func newAttachCommand() *cobra.Command {
	return newVMCommand("attach", false, &cobra.Command{
		Use:   "attach VM",
		Short: "protect a VM again after a detach",
		Long: `Protects a VM again after a detach (or at once, if the daemon has not attached it
yet). VM is its name, UUID or id.`,
		Example: "  qcdp attach vm1\n  qcdp attach vm1 --json",
	}, func(ctx context.Context, c *hostClient, o vmOptions) error { return c.Attach(ctx, o.vm) })
}
