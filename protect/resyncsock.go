package protect

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/proc"
)

// resyncSocket returns the path where vm's QEMU makes its NBD server listen
// while a resync reads the VM's disks (package filter). QEMU creates the
// socket, so the path lies in a directory of the VM's own under the NBD
// socket directory, owned by the user QEMU runs as (libvirt runs it as
// libvirt-qemu) with mode 0700: a QEMU of another user cannot reach
// another VM's export. (Under AppArmor, libvirt's per-VM profile must
// allow the directory; see the README.)
func (d *Engine) resyncSocket(vm hypervisor.VM, qemu proc.Process) (string, error) {
	h := sha256.Sum256([]byte(vm.ID))
	dir := filepath.Join(d.pol.Host.NBDSocketDir, "vm-"+hex.EncodeToString(h[:8]))
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/"+strconv.Itoa(qemu.PID), &st); err != nil {
		return "", fmt.Errorf("protect: the user QEMU (%v) runs as: %w", qemu, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("protect: %w", err)
	}
	if err := os.Chown(dir, int(st.Uid), int(st.Gid)); err != nil {
		return "", fmt.Errorf("protect: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("protect: %w", err)
	}
	return filepath.Join(dir, "nbd.sock"), nil
}
