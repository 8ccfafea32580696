package hypervisor

// Sources of a VM, as VM.Source reports them.
const (
	SourceLibvirt = "libvirt"
	SourceQMP     = "qmp"
)

// VM is one virtual machine as a source sees it.
type VM struct {
	ID      string            // stable identity: libvirt domain UUID, or the QMP socket's base name (Proxmox vmid)
	Name    string            // libvirt domain name, or QEMU's -name (the ID when QEMU has none)
	UUID    string            // domain or QEMU UUID, lower case, "" when QEMU has none
	Labels  map[string]string // libvirt metadata labels (see the package doc); nil when none
	Source  string            // SourceLibvirt or SourceQMP
	Running bool              // a QEMU process exists (paused counts as running)

	Socket string // the QMP socket path (SourceQMP only)
}

// Disk is one disk of a VM.
type Disk struct {
	ID           string // stable identity: VM.ID + "/" + Target
	Target       string // libvirt target dev ("vda"), or the QEMU drive or device id
	Node         string // QEMU format node the disk's device reads through, what a capture mirror copies from; "" when the VM is not running
	Format       string // "qcow2", "raw", ...
	Qcow2Version int    // 2 or 3 for qcow2 (3 is needed for persistent bitmaps), 0 otherwise or when unknown
	Size         int64  // virtual size in bytes; 0 when the VM is not running
	File         string // the image file or block device; protocol:name for a libvirt network disk
}

// EventKind is what happened to a VM.
type EventKind string

// Lifecycle event kinds. They are libvirt's event types.
const (
	EventDefined     EventKind = "defined"
	EventUndefined   EventKind = "undefined"
	EventStarted     EventKind = "started"
	EventSuspended   EventKind = "suspended"
	EventResumed     EventKind = "resumed"
	EventStopped     EventKind = "stopped"
	EventShutdown    EventKind = "shutdown" // the guest began or finished shutting down; "stopped" follows
	EventPMSuspended EventKind = "pmsuspended"
	EventCrashed     EventKind = "crashed"
)

// LifecycleEvent is a change in a VM's life.
type LifecycleEvent struct {
	VM     VM // ID, Name, UUID, Source and Running; no Labels
	Kind   EventKind
	Detail int // libvirt's detail code for Kind (e.g. for stopped: 0 shutdown, 1 destroyed, 2 crashed)
}
