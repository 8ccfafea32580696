package qmp

import (
	"context"
	"fmt"
)

// Version is a QEMU version.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// QueryVersion runs query-version.
func (c *Client) QueryVersion(ctx context.Context) (Version, error) {
	var r struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	}
	if err := c.Execute(ctx, "query-version", nil, &r); err != nil {
		return Version{}, err
	}
	return Version{Major: r.QEMU.Major, Minor: r.QEMU.Minor, Micro: r.QEMU.Micro, Package: r.Package}, nil
}

// BlockdevAdd runs blockdev-add with options, a value that marshals to
// BlockdevOptions (driver, node-name, ...).
func (c *Client) BlockdevAdd(ctx context.Context, options any) error {
	return c.Execute(ctx, "blockdev-add", options, nil)
}

// BlockdevDel runs blockdev-del on a node added by blockdev-add.
func (c *Client) BlockdevDel(ctx context.Context, nodeName string) error {
	return c.Execute(ctx, "blockdev-del", map[string]string{"node-name": nodeName}, nil)
}

// Mirror sync modes, copy modes and error actions. Never change: QEMU's.
const (
	SyncFull = "full"
	SyncTop  = "top"
	SyncNone = "none"

	CopyModeBackground    = "background"
	CopyModeWriteBlocking = "write-blocking"

	ErrorActionReport = "report"
	ErrorActionIgnore = "ignore"
	ErrorActionStop   = "stop"
	ErrorActionEnospc = "enospc"
)

// MirrorArgs are the arguments of blockdev-mirror. Empty members are left
// out, so QEMU applies its defaults.
type MirrorArgs struct {
	JobID          string `json:"job-id,omitempty"`
	Device         string `json:"device"` // source node
	Target         string `json:"target"` // target node
	Sync           string `json:"sync"`
	Replaces       string `json:"replaces,omitempty"`
	Speed          int64  `json:"speed,omitempty"`
	Granularity    uint32 `json:"granularity,omitempty"`
	BufSize        int64  `json:"buf-size,omitempty"`
	OnSourceError  string `json:"on-source-error,omitempty"`
	OnTargetError  string `json:"on-target-error,omitempty"`
	FilterNodeName string `json:"filter-node-name,omitempty"`
	CopyMode       string `json:"copy-mode,omitempty"`
	AutoFinalize   *bool  `json:"auto-finalize,omitempty"`
	AutoDismiss    *bool  `json:"auto-dismiss,omitempty"`
}

// BlockdevMirror starts a mirror job.
func (c *Client) BlockdevMirror(ctx context.Context, args MirrorArgs) error {
	return c.Execute(ctx, "blockdev-mirror", args, nil)
}

// BlockJobCancel cancels the block job id. For a mirror that is READY,
// QEMU ends the job with BLOCK_JOB_COMPLETED when force is false (the target
// is left consistent) or BLOCK_JOB_CANCELLED when force is true; the guest
// stays on its source either way.
func (c *Client) BlockJobCancel(ctx context.Context, id string, force bool) error {
	return c.Execute(ctx, "block-job-cancel", map[string]any{"device": id, "force": force}, nil)
}

// BlockJobPause pauses the block job id.
func (c *Client) BlockJobPause(ctx context.Context, id string) error {
	return c.Execute(ctx, "block-job-pause", map[string]string{"device": id}, nil)
}

// BlockJobResume resumes the block job id, also after an error stopped it.
func (c *Client) BlockJobResume(ctx context.Context, id string) error {
	return c.Execute(ctx, "block-job-resume", map[string]string{"device": id}, nil)
}

// BlockJobInfo is one entry of query-block-jobs.
type BlockJobInfo struct {
	Type         string `json:"type"`   // "mirror", "backup", ...
	Device       string `json:"device"` // the job id
	Len          int64  `json:"len"`
	Offset       int64  `json:"offset"`
	Busy         bool   `json:"busy"`
	Paused       bool   `json:"paused"`
	Speed        int64  `json:"speed"`
	IOStatus     string `json:"io-status"` // "ok", "failed", "nospace"
	Ready        bool   `json:"ready"`
	Status       string `json:"status"` // JobStatus: "running", "ready", "paused", ...
	AutoFinalize bool   `json:"auto-finalize"`
	AutoDismiss  bool   `json:"auto-dismiss"`
	Error        string `json:"error,omitempty"`
}

// QueryBlockJobs runs query-block-jobs.
func (c *Client) QueryBlockJobs(ctx context.Context) ([]BlockJobInfo, error) {
	var r []BlockJobInfo
	if err := c.Execute(ctx, "query-block-jobs", nil, &r); err != nil {
		return nil, err
	}
	return r, nil
}

// BlockNode is one entry of query-named-block-nodes, the members qcdp uses.
type BlockNode struct {
	NodeName string    `json:"node-name"`
	Driver   string    `json:"drv"`
	File     string    `json:"file"` // the node's filename as QEMU shows it
	ReadOnly bool      `json:"ro"`
	Image    ImageInfo `json:"image"`
}

// ImageInfo is the image part of a BlockNode.
type ImageInfo struct {
	Filename        string `json:"filename"`
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	ActualSize      int64  `json:"actual-size,omitempty"`
	BackingFilename string `json:"backing-filename,omitempty"`
}

// QueryNamedBlockNodes runs query-named-block-nodes with flat set, so each
// node reports only its own image and not its backing chain.
func (c *Client) QueryNamedBlockNodes(ctx context.Context) ([]BlockNode, error) {
	var r []BlockNode
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &r); err != nil {
		return nil, err
	}
	return r, nil
}

// HumanMonitorCommand runs one HMP command line and returns its output. HMP
// reports most failures, qemu-io's among them, only in that text.
func (c *Client) HumanMonitorCommand(ctx context.Context, line string) (string, error) {
	var out string
	if err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": line}, &out); err != nil {
		return "", err
	}
	return out, nil
}

// BlockJobSetSpeed sets the speed limit of the block job id in bytes per
// second; 0 removes the limit.
func (c *Client) BlockJobSetSpeed(ctx context.Context, id string, speed int64) error {
	return c.Execute(ctx, "block-job-set-speed", map[string]any{"device": id, "speed": speed}, nil)
}
