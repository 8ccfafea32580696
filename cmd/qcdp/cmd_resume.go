package main

import (
	"context"

	"github.com/spf13/cobra"
)

func newResumeCommand() *cobra.Command {
	return newVMCommand("resume", true, &cobra.Command{
		Use:   "resume VM [--disk vda]",
		Short: "end a pause; what changed is re-copied",
		Long: `Ends a pause: the jobs resume and re-copy what changed, bracketed as a resync in
the stream. VM is its name, UUID or id.`,
		Example: "  qcdp resume vm1\n  qcdp resume vm1 --disk vda",
	}, func(ctx context.Context, c *hostClient, o vmOptions) error { return c.Resume(ctx, o.vm, o.disk) })
}
