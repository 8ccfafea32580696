package configs

import (
	"bytes"
	"strings"

	"github.com/BurntSushi/toml"
)

// The file's shape, for MarshalTOML: sizes and durations as the strings a
// person would write.
type (
	fileRoot struct {
		Host     fileHost    `toml:"host"`
		Defaults fileTuning  `toml:"defaults"`
		Group    []fileGroup `toml:"group"`
	}
	fileHost struct {
		StateDir      string   `toml:"state_dir"`
		ControlSocket string   `toml:"control_socket"`
		NBDSocketDir  string   `toml:"nbd_socket_dir"`
		LogLevel      string   `toml:"log_level"`
		LibvirtURI    string   `toml:"libvirt_uri,omitempty"`
		QMPSockets    []string `toml:"qmp_sockets,omitempty"`
		QEMUGroup     string   `toml:"qemu_group,omitempty"`
		TLSCA         string   `toml:"tls_ca,omitempty"`
		TLSCert       string   `toml:"tls_cert,omitempty"`
		TLSKey        string   `toml:"tls_key,omitempty"`
	}
	fileTuning struct {
		SpoolMax     string `toml:"spool_max"`
		SpoolSegment string `toml:"spool_segment"`
		SyncInterval string `toml:"sync_interval"`
		SyncBytes    string `toml:"sync_bytes"`
		Granularity  int64  `toml:"granularity"`
		// ResyncReadRate is resync_read_rate.
		ResyncReadRate string `toml:"resync_read_rate"`
	}
	fileGroup struct {
		Name      string `toml:"name"`
		Replica   string `toml:"replica,omitempty"`
		Bandwidth string `toml:"bandwidth,omitempty"`
		// AppConsistentEvery is app_consistent_every, "" when off.
		AppConsistentEvery string `toml:"app_consistent_every,omitempty"`
		fileTuning
		VM []fileVM `toml:"vm"`
	}
	fileVM struct {
		Name  string     `toml:"name,omitempty"`
		UUID  string     `toml:"uuid,omitempty"`
		Label string     `toml:"label,omitempty"`
		Disks *fileDisks `toml:"disks,omitempty"`
	}
	fileDisks struct {
		Include []string `toml:"include,omitempty"`
		Exclude []string `toml:"exclude,omitempty"`
	}
)

// MarshalTOML writes the effective policy, every default spelled out, as a
// file Parse reads back to an equal Policy (what `qcdp host --check-config`
// can print).
func (p *Policy) MarshalTOML() ([]byte, error) {
	root := fileRoot{
		Host: fileHost{
			StateDir:      p.Host.StateDir,
			ControlSocket: p.Host.ControlSocket,
			NBDSocketDir:  p.Host.NBDSocketDir,
			LogLevel:      strings.ToLower(p.Host.LogLevel.String()),
			LibvirtURI:    p.Host.LibvirtURI,
			QMPSockets:    p.Host.QMPSockets,
			QEMUGroup:     p.Host.QEMUGroup,
			TLSCA:         p.Host.TLSCA,
			TLSCert:       p.Host.TLSCert,
			TLSKey:        p.Host.TLSKey,
		},
		Defaults: fileTuningOf(p.Defaults),
	}
	for _, g := range p.groups {
		fg := fileGroup{Name: g.Name, Replica: g.Replica, fileTuning: fileTuningOf(g.Tuning)}
		if g.Bandwidth > 0 {
			fg.Bandwidth = formatSize(g.Bandwidth)
		}
		if g.AppConsistentEvery > 0 {
			fg.AppConsistentEvery = g.AppConsistentEvery.String()
		}
		for _, vm := range g.VMs {
			fv := fileVM{Name: vm.Name, UUID: vm.UUID, Label: vm.Label}
			if len(vm.Disks.Include)+len(vm.Disks.Exclude) > 0 {
				fv.Disks = &fileDisks{Include: vm.Disks.Include, Exclude: vm.Disks.Exclude}
			}
			fg.VM = append(fg.VM, fv)
		}
		root.Group = append(root.Group, fg)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(root); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func fileTuningOf(t Tuning) fileTuning {
	return fileTuning{
		SpoolMax:       formatSize(t.SpoolMax),
		SpoolSegment:   formatSize(t.SpoolSegment),
		SyncInterval:   t.SyncInterval.String(),
		SyncBytes:      formatSize(t.SyncBytes),
		Granularity:    t.Granularity,
		ResyncReadRate: formatSize(t.ResyncReadRate),
	}
}
