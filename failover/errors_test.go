package failover

import (
	"os/exec"

	"github.com/digitalocean/go-libvirt"
)

var (
	exec_LookPath = exec.LookPath
	noDomain      = libvirt.Error{Code: uint32(libvirt.ErrNoDomain), Message: "Domain not found"}
	noNetwork     = libvirt.Error{Code: uint32(libvirt.ErrNoNetwork), Message: "Network not found"}
)
