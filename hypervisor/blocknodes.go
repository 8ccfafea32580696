package hypervisor

import (
	"context"
	"fmt"
	"strings"

	"github.com/qcdp/qcdp/qmp"
)

// imageInfo is QEMU's ImageInfo, the members used here.
type imageInfo struct {
	Filename       string `json:"filename"`
	Format         string `json:"format"`
	VirtualSize    int64  `json:"virtual-size"`
	FormatSpecific *struct {
		Type string `json:"type"`
		Data struct {
			Compat string `json:"compat"` // qcow2: "0.10" is v2, "1.1" is v3
		} `json:"data"`
	} `json:"format-specific"`
	BackingImage *imageInfo `json:"backing-image"`
}

// namedNode is one entry of query-named-block-nodes.
type namedNode struct {
	NodeName string    `json:"node-name"`
	Driver   string    `json:"drv"`
	File     string    `json:"file"`
	Image    imageInfo `json:"image"`
}

// blockDevice is one entry of query-block.
type blockDevice struct {
	Device    string `json:"device"` // -drive id, "" for -blockdev
	QDev      string `json:"qdev"`   // the device's id or QOM path
	Removable bool   `json:"removable"`
	Inserted  *struct {
		NodeName string    `json:"node-name"`
		Driver   string    `json:"drv"`
		File     string    `json:"file"`
		Image    imageInfo `json:"image"`
	} `json:"inserted"`
}

func queryNamedNodes(ctx context.Context, c *qmp.Client) ([]namedNode, error) {
	var nodes []namedNode
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	return nodes, nil
}

func queryBlock(ctx context.Context, c *qmp.Client) ([]blockDevice, error) {
	var devs []blockDevice
	if err := c.Execute(ctx, "query-block", nil, &devs); err != nil {
		return nil, err
	}
	return devs, nil
}

// qcow2Version is the qcow2 version of img, 0 when img is not qcow2 or
// QEMU does not say.
func qcow2Version(img imageInfo) int {
	if img.Format != "qcow2" || img.FormatSpecific == nil {
		return 0
	}
	switch img.FormatSpecific.Data.Compat {
	case "0.10":
		return 2
	case "1.1":
		return 3
	}
	return 0
}

// filterDrivers are QEMU block drivers that sit on top of a disk's format
// node without being its format: a capture mirror's mirror_top among them.
var filterDrivers = map[string]bool{
	"mirror_top":        true,
	"commit_top":        true,
	"copy-before-write": true,
	"copy-on-read":      true,
	"throttle":          true,
	"compress":          true,
	"preallocate":       true,
}

// findNode returns the node named name.
func findNode(nodes []namedNode, name string) (namedNode, bool) {
	for _, n := range nodes {
		if n.NodeName == name {
			return n, true
		}
	}
	return namedNode{}, false
}

// belowFilters returns the format node under a device's root node,
// skipping the filters stacked on it. query-block's image info of a filter
// (not query-named-block-nodes' flat one) has the image under it as its
// backing image, but not that image's node name: the node is the named one
// with the same file and driver that is not a filter.
func belowFilters(nodes []namedNode, root string, img imageInfo) (namedNode, error) {
	node, ok := findNode(nodes, root)
	if !ok {
		return namedNode{}, fmt.Errorf("%w: %q is not a named node", ErrNoNode, root)
	}
	for depth := 0; filterDrivers[node.Driver]; depth++ {
		if img.BackingImage == nil || depth > 8 {
			return namedNode{}, fmt.Errorf("%w: %s is a %s filter and QEMU shows nothing under it", ErrNoNode, root, node.Driver)
		}
		img = *img.BackingImage
		found := false
		for _, n := range nodes {
			if !filterDrivers[n.Driver] && n.Driver == img.Format && n.Image.Filename == img.Filename {
				node, found = n, true
				break
			}
		}
		if !found {
			return namedNode{}, fmt.Errorf("%w: no %s node for %s under filter %s", ErrNoNode, img.Format, img.Filename, root)
		}
	}
	return node, nil
}

// deviceTarget names a query-block entry: its -drive id, else its device
// id, else its QOM path.
func deviceTarget(d blockDevice) string {
	if d.Device != "" {
		return d.Device
	}
	// -device id=X shows as /machine/peripheral/X/<backend>.
	if rest, ok := strings.CutPrefix(d.QDev, "/machine/peripheral/"); ok {
		id, _, _ := strings.Cut(rest, "/")
		return id
	}
	return d.QDev
}
