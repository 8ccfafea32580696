package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/protect"
)

// What attach, detach, pause and resume share: they name one VM (and maybe
// one of its disks), ask the host daemon for one action and print the VM's
// disks as they are after it.

// vmOptions are the flags of the VM commands.
type vmOptions struct {
	socket string
	disk   string // "" for all the VM's disks (not for attach)
	json   bool
	vm     string
}

// vmAction is what one VM command asks the daemon.
type vmAction func(ctx context.Context, c *hostClient, opts vmOptions) error

// newVMCommand returns the command of one VM action; perDisk adds --disk.
func newVMCommand(action string, perDisk bool, cmd *cobra.Command, do vmAction) *cobra.Command {
	var opts vmOptions
	cmd.Args = positional("VM")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		opts.vm = args[0]
		return runVM(cmd.Context(), action, do, opts, cmd.OutOrStdout())
	}
	addHostSocketFlag(cmd.Flags(), &opts.socket)
	addJSONFlag(cmd.Flags(), &opts.json)
	if perDisk {
		cmd.Flags().StringVar(&opts.disk, "disk", "", "only this `DISK`: its target (vda) or VM.TARGET (vm1.vda)")
	}
	return cmd
}

// vmResult is what a VM command prints with --json.
type vmResult struct {
	VM     string `json:"vm"`
	Action string `json:"action"`
	Disk   string `json:"disk,omitempty"` // the disk asked for; "" for all
	// Disks are the VM's protected disks after the action, as `qcdp
	// status` shows them.
	Disks []protect.DiskStatus `json:"disks"`
}

func runVM(ctx context.Context, action string, do vmAction, opts vmOptions, out io.Writer) error {
	c := newHostClient(opts.socket)
	if err := do(ctx, c, opts); err != nil {
		return err
	}
	res := vmResult{VM: opts.vm, Action: action, Disk: opts.disk, Disks: []protect.DiskStatus{}}
	// The action is done: a status that cannot be had only leaves the
	// disks out.
	if st, err := c.Status(ctx); err == nil {
		for _, g := range st.Groups {
			for _, d := range g.Disks {
				if d.VM == opts.vm || strings.EqualFold(d.VMID, opts.vm) {
					res.Disks = append(res.Disks, d)
				}
			}
		}
	}
	if opts.json {
		return printJSON(out, res)
	}
	fmt.Fprintf(out, "%s: %s done\n", opts.vm, action)
	for _, d := range res.Disks {
		fmt.Fprintf(out, "  %s (%s): %s\n", d.Target, d.Stream, d.State)
	}
	return nil
}
