package failover

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/vfs"
)

// Mode is the kind of a failover.
type Mode string

// Modes.
const (
	ModeTest    Mode = "test"    // standbys on the test network; replication goes on
	ModeStart   Mode = "start"   // unplanned: the group is fenced, standbys on the production networks
	ModePlanned Mode = "planned" // the protected VMs shut down, drained to RPO 0, then as start
)

// Phase is where a failover is.
type Phase string

// Phases.
const (
	PhaseStarting   Phase = "starting"   // standbys being provisioned
	PhaseRunning    Phase = "running"    // every standby runs on its overlay over the view
	PhaseCommitting Phase = "committing" // the disks are being pulled onto local storage
	PhaseCommitted  Phase = "committed"  // the standbys need nothing of the replica daemon
)

// State is a group's failover as it is kept on disk: enough to undo,
// clean up, commit or serve it again after a restart of the replica
// daemon.
type State struct {
	Tenant string        `json:"tenant"`
	Group  string        `json:"group"`
	Mode   Mode          `json:"mode"`
	Phase  Phase         `json:"phase"`
	Point  journal.Point `json:"point"`
	Fenced bool          `json:"fenced"` // the group's stream is refused
	// Export is the id of the view the standbys' overlays read from;
	// Socket the NBD socket that serves it to QEMU.
	Export   string `json:"export"`
	Exported bool   `json:"exported"` // this failover exported it (teardown withdraws it)
	Socket   string `json:"socket"`
	// CreatedNetwork is the test network this failover defined ("": none).
	CreatedNetwork string    `json:"created_network,omitempty"`
	Started        time.Time `json:"started"`
	Committed      time.Time `json:"committed,omitempty"`
	VMs            []VMState `json:"vms"`
}

// VMState is one standby.
type VMState struct {
	ID       string      `json:"id"`     // the protected VM's id
	Name     string      `json:"name"`   // its name on its host
	Domain   string      `json:"domain"` // the standby domain's name
	UUID     string      `json:"uuid"`   // the standby domain's UUID ("" before it is defined)
	Running  bool        `json:"running"`
	Networks []string    `json:"networks,omitempty"` // each NIC's recovery network
	Disks    []DiskState `json:"disks"`
	// BootSeconds is the time from the start of the failover to this
	// standby running.
	BootSeconds float64 `json:"boot_seconds,omitempty"`
	PostBoot    string  `json:"post_boot,omitempty"` // the post_boot command's outcome
}

// DiskState is one standby disk.
type DiskState struct {
	Disk      string `json:"disk"`   // its name in the group's stream
	Target    string `json:"target"` // its name in the standby
	Size      uint64 `json:"size"`
	Overlay   string `json:"overlay"`
	Committed bool   `json:"committed"`
	Pulled    uint64 `json:"pulled,omitempty"` // commit progress
	Total     uint64 `json:"total,omitempty"`
}

// The state file: "QCFO" (the index of failovers: "QCFI"), version 1 (2 bytes), 0 (2), the CRC32C of the
// JSON (4), its length (4), then the JSON. Published whole (vfs.Publish):
// a crash leaves the old state or the new one.
const (
	stateMagic   = "QCFO"
	indexMagic   = "QCFI"
	stateVersion = 1
	stateHeader  = 16
	maxState     = 4 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeState(s *State) ([]byte, error) { return encodeFile(stateMagic, s) }

func decodeState(path string, b []byte) (*State, error) {
	var s State
	if err := decodeFile(path, stateMagic, b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// encodeFile lays v out as a state file of kind magic (the layout above).
func encodeFile(magic string, v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	b := make([]byte, stateHeader, stateHeader+len(j))
	copy(b, magic)
	binary.LittleEndian.PutUint16(b[4:], stateVersion)
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(j, castagnoli))
	binary.LittleEndian.PutUint32(b[12:], uint32(len(j)))
	return append(b, j...), nil
}

func decodeFile(path, magic string, b []byte, v any) error {
	bad := func(why string) error { return fmt.Errorf("%w: %s: %s", ErrState, path, why) }
	if len(b) < stateHeader || string(b[:4]) != magic {
		return bad("not a failover state file")
	}
	if b[6] != 0 || b[7] != 0 {
		return bad("reserved bytes set")
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != stateVersion {
		return bad(fmt.Sprintf("version %d, this qcdp reads %d", v, stateVersion))
	}
	n := binary.LittleEndian.Uint32(b[12:])
	if int64(n) != int64(len(b)-stateHeader) {
		return bad(fmt.Sprintf("%d bytes of JSON announced, %d present", n, len(b)-stateHeader))
	}
	j := b[stateHeader:]
	if crc32.Checksum(j, castagnoli) != binary.LittleEndian.Uint32(b[8:]) {
		return bad("checksum mismatch")
	}
	if err := json.NewDecoder(bytes.NewReader(j)).Decode(v); err != nil {
		return bad(err.Error())
	}
	return nil
}

// readFile reads a state file whole, bounded; nil when there is none.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failover: state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxState+1))
	if err != nil {
		return nil, fmt.Errorf("failover: read state %s: %w", path, err)
	}
	if len(b) > maxState {
		return nil, fmt.Errorf("%w: %s: larger than %d bytes", ErrState, path, maxState)
	}
	return b, nil
}

// loadState reads a group's state; nil when it has none.
func loadState(path string) (*State, error) {
	b, err := readFile(path)
	if err != nil || b == nil {
		return nil, err
	}
	return decodeState(path, b)
}

func saveState(path string, s *State) error {
	b, err := encodeState(s)
	if err != nil {
		return fmt.Errorf("failover: encode state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return fmt.Errorf("failover: state dir: %w", err)
	}
	if err := vfs.Publish(vfs.Default, path, b); err != nil {
		return fmt.Errorf("failover: keep state %s: %w", path, err)
	}
	return nil
}

func removeState(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("failover: remove state: %w", err)
	}
	return nil
}

// The index of a site's failovers, <storage_root>/FAILOVERS: every group
// that has a failover state, and where, whatever the plans say now. A
// restarted daemon fences from it even when the operator removed a
// group's plan or moved its standby_dir.
type index struct {
	States map[string]string `json:"states"` // tenant/group → its state file
}

func (e *Engine) indexPath() string { return filepath.Join(e.cfg.StorageRoot, "FAILOVERS") }

func (e *Engine) loadIndex() (index, error) {
	ix := index{States: map[string]string{}}
	b, err := readFile(e.indexPath())
	if err != nil || b == nil {
		return ix, err
	}
	if err := decodeFile(e.indexPath(), indexMagic, b, &ix); err != nil {
		return index{States: map[string]string{}}, err
	}
	if ix.States == nil {
		ix.States = map[string]string{}
	}
	return ix, nil
}

// indexSet records (path non-empty) or forgets a group's failover.
func (e *Engine) indexSet(tenant, group, path string) error {
	e.ixMu.Lock()
	defer e.ixMu.Unlock()
	ix, err := e.loadIndex()
	if err != nil {
		return err
	}
	k := tenant + "/" + group
	if path == "" {
		if _, ok := ix.States[k]; !ok {
			return nil
		}
		delete(ix.States, k)
	} else {
		ix.States[k] = path
	}
	b, err := encodeFile(indexMagic, ix)
	if err != nil {
		return err
	}
	if err := vfs.Publish(vfs.Default, e.indexPath(), b); err != nil {
		return fmt.Errorf("failover: keep the index of failovers: %w", err)
	}
	return nil
}
