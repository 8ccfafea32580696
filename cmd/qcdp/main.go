// Command qcdp is the one qcdp binary: the host daemon, the replica daemon
// and the operator's commands are its subcommands, one file each.
//
// Exit codes: 0 success, 1 the command failed, 2 the command line was wrong.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand: it parses its own flags from args and writes
// what it has to say to out.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, out io.Writer) error
}

var commands = map[string]command{
	"attach":   {"protect a VM again after a detach", vmCommand("attach")},
	"bookmark": {"put a named (or app-consistent) restore point into a group's stream", bookmarkCommand},
	"capture":  {"serve capture exports into a spool (the NBD target of QEMU's mirror)", captureCommand},
	"certs":    {"create a CA and host and replica certificates (a test or small install)", certsCommand},
	"exports":  {"list the exported views", exportsCommand},
	"export":   {"serve a group's restore point over NBD (read-only, or writable into an overlay)", exportCommand},
	"detach":   {"cleanly end capture of a VM (cancel, never complete)", vmCommand("detach")},
	"host":     {"the host daemon: protect the VMs a policy names", hostCommand},
	"replica":  {"the replica daemon: receive groups' streams into journals", replicaCommand},
	"points":   {"list a group's restore points on the replica", pointsCommand},
	"pause":    {"hold capture of a VM; QEMU tracks changes meanwhile", vmCommand("pause")},
	"restore":  {"write a disk at a restore point into a raw image", restoreCommand},
	"resume":   {"end a pause; what changed is re-copied", vmCommand("resume")},
	"spool":    {"inspect, verify and apply a spool (show, verify, apply)", spoolCommand},
	"status":   {"show protection groups and disk states", statusCommand},
	"unexport": {"withdraw an exported view", unexportCommand},
	"verify":   {"check every record of a group's journal", verifyCommand},
	"version":  {"print the version", versionCommand},
}

// usageError marks a wrong command line (exit code 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func versionCommand(_ context.Context, _ []string, out io.Writer) error {
	_, err := fmt.Fprintf(out, "qcdp %s\n", version)
	return err
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: qcdp COMMAND [flags]   (qcdp COMMAND -h for its flags)")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "qcdp: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, args[1:], stdout)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "qcdp %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "qcdp %s: %v\n", args[0], err)
		return 1
	}
}
