package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qcdp/qcdp/replica"
	"github.com/qcdp/qcdp/replica/journal"
)

// The replica operator's commands on one group's journal: points, export,
// unexport, restore and verify. They share how a group and a restore point
// are named, so they live together.

// viewOptions are the flags the view commands share.
type viewOptions struct {
	socket   string
	tenant   string
	json     bool
	seq      uint64
	at       string        // RFC 3339 time
	ago      time.Duration // or that long before now
	bookmark string
}

func (o *viewOptions) flags(name string, out io.Writer, withTarget bool) *flagSet {
	fs := newFlags(name, out)
	fs.StringVar(&o.socket, "socket", "/run/qcdp/replica.sock", "control socket of `qcdp replica`")
	fs.StringVar(&o.tenant, "tenant", "", "the group's tenant (needed only when several tenants have the group)")
	fs.BoolVar(&o.json, "json", false, "print JSON")
	if withTarget {
		fs.Uint64Var(&o.seq, "seq", 0, "restore point: the state after this seq")
		fs.StringVar(&o.at, "time", "", "restore point: the newest at or before this RFC 3339 time")
		fs.DurationVar(&o.ago, "ago", 0, "restore point: the newest at or before this long ago")
		fs.StringVar(&o.bookmark, "bookmark", "", "restore point: the newest bookmark of this name")
	}
	return fs
}

// target is the restore point the flags name.
func (o *viewOptions) target() (journal.Target, error) {
	var t journal.Target
	n := 0
	if o.seq != 0 {
		t.Seq, n = o.seq, n+1
	}
	if o.at != "" {
		v, err := time.Parse(time.RFC3339Nano, o.at)
		if err != nil {
			return t, usagef("--time %q: want RFC 3339, e.g. 2026-11-21T22:15:00Z", o.at)
		}
		t.Time, n = v, n+1
	}
	if o.ago != 0 {
		t.Time, n = time.Now().Add(-o.ago), n+1
	}
	if o.bookmark != "" {
		t.Bookmark, n = o.bookmark, n+1
	}
	if n != 1 {
		return t, usagef("name exactly one restore point: --seq, --time, --ago or --bookmark")
	}
	return t, nil
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func pointsCommand(ctx context.Context, args []string, out io.Writer) error {
	var o viewOptions
	fs := o.flags("points", out, false)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usagef("want GROUP")
	}
	p, err := newReplicaClient(o.socket).Points(ctx, o.tenant, fs.Arg(0))
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(out, p)
	}
	w := p.Window
	if w.LastSeq == 0 {
		fmt.Fprintf(out, "group %s/%s: no restore point yet (waiting for every disk's sync-complete)\n", p.Tenant, p.Group)
	} else {
		fmt.Fprintf(out, "group %s/%s: any point from seq %d (%s) to seq %d (%s)\n", p.Tenant, p.Group,
			w.FirstSeq, w.FirstTime.UTC().Format(time.RFC3339), w.LastSeq, w.LastTime.UTC().Format(time.RFC3339))
		for _, g := range w.Gaps {
			fmt.Fprintf(out, "  except seq %d to %d (resync or initial sync)\n", g.FromSeq, g.ToSeq)
		}
	}
	sort.Slice(p.Points, func(i, j int) bool { return p.Points[i].Seq < p.Points[j].Seq })
	tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tNAME")
	for _, pt := range p.Points {
		kind := pt.Kind.String()
		if pt.Kind == 0 {
			kind = "point"
		}
		if pt.LongTerm {
			kind += " (long-term)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", pt.Seq, pt.Time.UTC().Format(time.RFC3339Nano), kind, pt.Name)
	}
	return tw.Flush()
}

func exportCommand(ctx context.Context, args []string, out io.Writer) error {
	var o viewOptions
	var writable bool
	fs := o.flags("export", out, true)
	fs.BoolVar(&writable, "writable", false, "writes go to an overlay, never to the journal (for test failover)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usagef("want GROUP")
	}
	at, err := o.target()
	if err != nil {
		return err
	}
	e, err := newReplicaClient(o.socket).Export(ctx, o.tenant, fs.Arg(0), at, writable)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(out, e)
	}
	fmt.Fprintf(out, "export %s: %s/%s at seq %d (%s)\n", e.ID, e.Tenant, e.Group, e.Point.Seq, e.Point.Time.UTC().Format(time.RFC3339Nano))
	disks := make([]string, 0, len(e.URIs))
	for d := range e.URIs {
		disks = append(disks, d)
	}
	sort.Strings(disks)
	for _, d := range disks {
		fmt.Fprintf(out, "  %s  %s\n", d, e.URIs[d])
	}
	fmt.Fprintf(out, "withdraw with: qcdp unexport %s\n", e.ID)
	return nil
}

func exportsCommand(ctx context.Context, args []string, out io.Writer) error {
	var o viewOptions
	fs := o.flags("exports", out, false)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 0 {
		return usagef("takes no arguments")
	}
	es, err := newReplicaClient(o.socket).Exports(ctx)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(out, es)
	}
	tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tGROUP\tSEQ\tTIME\tWRITABLE\tDISKS")
	for _, e := range es {
		disks := make([]string, 0, len(e.URIs))
		for d := range e.URIs {
			disks = append(disks, d)
		}
		sort.Strings(disks)
		fmt.Fprintf(tw, "%s\t%s/%s\t%d\t%s\t%v\t%s\n", e.ID, e.Tenant, e.Group, e.Point.Seq,
			e.Point.Time.UTC().Format(time.RFC3339), e.Writable, strings.Join(disks, ","))
	}
	return tw.Flush()
}

func unexportCommand(ctx context.Context, args []string, out io.Writer) error {
	var o viewOptions
	fs := o.flags("unexport", out, false)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usagef("want an export id (qcdp export prints it)")
	}
	return newReplicaClient(o.socket).Unexport(ctx, fs.Arg(0))
}

func restoreCommand(ctx context.Context, args []string, out io.Writer) error {
	var o viewOptions
	var disk, path, format string
	fs := o.flags("restore", out, true)
	fs.StringVar(&disk, "disk", "", "the disk to restore (its name in the stream)")
	fs.StringVar(&path, "out", "", "image to create on the replica host (never overwritten)")
	fs.StringVar(&format, "format", "raw", "raw or qcow2")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 1 || disk == "" || path == "" {
		return usagef("want GROUP, --disk and --out")
	}
	if format != "raw" && format != "qcow2" {
		return usagef("--format %q: want raw or qcow2", format)
	}
	abs, err := filepath.Abs(path) // the daemon resolves nothing against its own directory
	if err != nil {
		return usagef("--out %q: %v", path, err)
	}
	path = abs
	at, err := o.target()
	if err != nil {
		return err
	}
	c := newReplicaClient(o.socket)
	var r replica.RestoreInfo
	if format == "raw" {
		r, err = c.Restore(ctx, o.tenant, fs.Arg(0), at, disk, path)
	} else {
		r, err = restoreQcow2(ctx, c, o.tenant, fs.Arg(0), at, disk, path)
	}
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(out, r)
	}
	fmt.Fprintf(out, "restored %s at seq %d (%s) into %s (%d bytes of data)\n", r.Disk, r.Point.Seq,
		r.Point.Time.UTC().Format(time.RFC3339Nano), r.Path, r.Bytes)
	return nil
}

func verifyCommand(ctx context.Context, args []string, out io.Writer) error {
	var o viewOptions
	fs := o.flags("verify", out, false)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usagef("want GROUP")
	}
	rep, err := newReplicaClient(o.socket).Verify(ctx, o.tenant, fs.Arg(0))
	if err != nil {
		return err // names the file, offset and seq of what is corrupt
	}
	if o.json {
		return json.NewEncoder(out).Encode(rep)
	}
	fmt.Fprintf(out, "group %s: journal verified: %d segments, %d layers, %d records, %d bytes\n", fs.Arg(0), rep.Segments, rep.Layers, rep.Records, rep.Bytes)
	return nil
}

// restoreQcow2 writes a qcow2 image of one disk at a restore point by
// converting the point's NBD export with qemu-img (holes stay holes).
func restoreQcow2(ctx context.Context, c *replicaClient, tenant, group string, at journal.Target, disk, path string) (replica.RestoreInfo, error) {
	var r replica.RestoreInfo
	if _, err := os.Lstat(path); err == nil {
		return r, fmt.Errorf("restore: %s exists; it is never overwritten", path)
	}
	e, err := c.Export(ctx, tenant, group, at, false)
	if err != nil {
		return r, err
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		c.Unexport(uctx, e.ID)
	}()
	uri, ok := e.URIs[disk]
	if !ok {
		return r, fmt.Errorf("restore: group %s has no disk %q at seq %d", group, disk, e.Point.Seq)
	}
	// Converted beside its name and linked into place only when whole, so
	// neither an interrupted restore nor a file created meanwhile is lost.
	partial := path + ".partial"
	defer os.Remove(partial)
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", uri, partial)
	if b, err := cmd.CombinedOutput(); err != nil {
		return r, fmt.Errorf("restore: qemu-img convert %s: %w: %s", uri, err, strings.TrimSpace(string(b)))
	}
	if err := os.Link(partial, path); err != nil {
		return r, fmt.Errorf("restore: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return r, err
	}
	return replica.RestoreInfo{Point: e.Point, Disk: disk, Path: path, Bytes: st.Size()}, nil
}
