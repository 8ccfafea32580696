package main

import (
	"context"

	"github.com/spf13/cobra"
)

func newPauseCommand() *cobra.Command {
	return newVMCommand("pause", true, &cobra.Command{
		Use:   "pause VM [--disk vda]",
		Short: "hold capture of a VM; QEMU tracks changes meanwhile",
		Long: `Holds capture of a VM, or of one of its disks: writes are refused by the capture
export, the jobs stop and QEMU tracks what changes; the guest is not affected.
Nothing resumes until 'qcdp resume'. VM is its name, UUID or id.`,
		Example: "  qcdp pause vm1\n  qcdp pause vm1 --disk vda",
	}, func(ctx context.Context, c *hostClient, o vmOptions) error { return c.Pause(ctx, o.vm, o.disk) })
}
