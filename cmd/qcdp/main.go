// Command qcdp is the one qcdp binary: the host daemon, the replica daemon
// and the operator's commands are its subcommands, one file each
// (cmd_NAME.go: its options, its flags and run).
//
// Exit codes: 0 success, 1 the command failed, 2 the command line was wrong.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1
	exitCmdLine = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command line args and returns the exit code. SIGINT and
// SIGTERM cancel the command's context.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
	// Whatever fails before a command's own run is the command line's
	// fault (flags, arguments, unknown commands): exit 2.
	started := false
	markStarted(root, &started)

	cmd, err := root.ExecuteContextC(ctx)
	var usage usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelpShown):
		return exitCmdLine
	case errors.As(err, &usage) || !started:
		fmt.Fprintf(stderr, "%s: %v\nsee '%s --help'\n", cmd.CommandPath(), err, cmd.CommandPath())
		return exitCmdLine
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		fmt.Fprintf(stderr, "%s: interrupted\n", cmd.CommandPath())
		return exitFailed
	default:
		fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), err)
		return exitFailed
	}
}

// errHelpShown: the help was shown instead of running anything (exit 2).
var errHelpShown = errors.New("help shown")

// newRootCommand returns the command tree, fresh (each command's options
// live in the tree, so a tree runs once), writing to stdout and stderr.
func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "qcdp",
		Short: "continuous data protection for QEMU/KVM",
		Long: `qcdp captures every write of protected QEMU/KVM guests on their host, ships it in
order to a recovery site and keeps it in a journal there, so that any VM can be
brought back at any point in time.

Exit codes: 0 success, 1 the command failed, 2 the command line was wrong.`,
		Example: `  qcdp host --config /etc/qcdp/host.toml
  qcdp status --json
  qcdp points g1
  qcdp export g1 --ago 5m`,
		Version:           version,
		SilenceErrors:     true,
		SilenceUsage:      true,
		DisableAutoGenTag: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("qcdp {{.Version}}\n")
	// A command that groups others shows only "qcdp spool [command]".
	root.SetUsageTemplate(strings.Replace(root.UsageTemplate(),
		"Usage:{{if .Runnable}}", "Usage:{{if and .Runnable (not .HasAvailableSubCommands)}}", 1))
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(
		newHostCommand(), newStatusCommand(),
		newAttachCommand(), newDetachCommand(), newPauseCommand(), newResumeCommand(),
		newBookmarkCommand(),
		newCertsCommand(), newReplicaCommand(),
		newPointsCommand(), newExportCommand(), newExportsCommand(), newUnexportCommand(),
		newRestoreCommand(), newVerifyCommand(), newFailoverCommand(),
		newCaptureCommand(), newSpoolCommand(),
		newVersionCommand(), newGenManCommand(),
	)
	// Bare `qcdp` shows the help, and exits 2.
	root.RunE = func(cmd *cobra.Command, args []string) error {
		cmd.SetOut(cmd.ErrOrStderr())
		cmd.Help()
		return errHelpShown
	}
	needSubcommand(root)
	// cobra's own help and completion commands, made now so that they are
	// part of the tree like the others.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	if c, _, err := root.Find([]string{"help"}); err == nil && c != root {
		c.Short = "help about any command"
	}
	if c, _, err := root.Find([]string{"completion"}); err == nil && c != root {
		c.Short = "print the shell completion script (bash, zsh, fish, powershell)"
		c.Example = "  qcdp completion bash > /etc/bash_completion.d/qcdp\n  qcdp completion zsh > \"${fpath[1]}/_qcdp\""
		needSubcommand(c)
	}
	return root
}

// needSubcommand makes a command that only groups others refuse to run
// alone or with an unknown subcommand, as a wrong command line (cobra would
// show the help and succeed).
func needSubcommand(c *cobra.Command) {
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return unknownCommand(cmd, args[0])
		}
		return nil
	}
	if c.RunE == nil && c.Run == nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			var names []string
			for _, sub := range cmd.Commands() {
				if sub.IsAvailableCommand() {
					names = append(names, sub.Name())
				}
			}
			return usagef("missing subcommand: want %s", orList(names))
		}
	}
}

func unknownCommand(cmd *cobra.Command, name string) error {
	cmd.SuggestionsMinimumDistance = 2
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		return usagef("unknown command %q; did you mean %s?", name, orList(s))
	}
	return usagef("unknown command %q", name)
}

// markStarted wraps the run of c and of every command below it to set
// *started: an error from then on is the command's, not the command line's.
func markStarted(c *cobra.Command, started *bool) {
	if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			*started = true
			return run(cmd, args)
		}
	}
	for _, sub := range c.Commands() {
		markStarted(sub, started)
	}
}

// flagError turns pflag's errors into one sentence naming the flag, the
// value and what is wrong with it, marked as a wrong command line.
func flagError(cmd *cobra.Command, err error) error {
	var unknown *pflag.NotExistError
	if errors.As(err, &unknown) {
		// Go's flag package took -json for --json; pflag does not.
		if long, _, _ := strings.Cut(unknown.GetSpecifiedShortnames(), "="); len(long) > 1 && cmd.Flags().Lookup(long) != nil {
			return usagef("unknown flag -%s: long flags take two dashes, --%s", long, long)
		}
		return usageError{err}
	}
	var bad *pflag.InvalidValueError
	if !errors.As(err, &bad) {
		return usageError{err}
	}
	value := bad.GetValue()
	if value == "" || strings.ContainsAny(value, " \t\r\n") {
		value = fmt.Sprintf("%q", value)
	}
	cause := bad.Unwrap()
	var num *strconv.NumError
	if errors.As(cause, &num) {
		cause = errors.New("want a whole number")
		if errors.Is(num.Err, strconv.ErrRange) {
			cause = errors.New("out of range")
		}
	}
	return usagef("--%s %s: %v", bad.GetFlag().Name, value, cause)
}

// printJSON is how every command prints JSON: indented, one value.
func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
