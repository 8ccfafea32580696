package failover

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"time"
)

// commitPoll is how often a commit's progress is asked of libvirt, and
// commitStepTimeout how long one look may take.
const (
	commitPoll        = 500 * time.Millisecond
	commitStepTimeout = 30 * time.Second
)

// Commit makes a failover permanent while its standbys run: each disk's
// data is pulled from the view into its overlay (libvirt's block pull,
// QEMU's block-stream), after which the overlay stands alone and the
// standby needs nothing of the replica daemon. It returns once every pull
// has started; Status shows the progress and phase committed at the end.
// The group stays fenced: it fails back later.
func (e *Engine) Commit(ctx context.Context, tenant, group string) (*State, error) {
	unlock, err := e.lock(tenant, group)
	if err != nil {
		return nil, err
	}
	defer unlock()
	p, err := e.plan(tenant, group)
	if err != nil {
		return nil, err
	}
	path := statePath(p, tenant, group)
	st, err := loadState(path)
	switch {
	case err != nil:
		return nil, err
	case st == nil:
		return nil, fmt.Errorf("%w: %s/%s: nothing to commit", ErrNone, tenant, group)
	case st.Mode == ModeTest:
		return nil, fmt.Errorf("%w: %s/%s is in a test failover, which is never committed: `qcdp failover cleanup %s`, then fail over for real", ErrMode, tenant, group, group)
	case st.Phase == PhaseCommitted:
		return st, nil
	case st.Phase == PhaseStarting:
		return nil, fmt.Errorf("%w: %s/%s: its standbys are still starting", ErrBusy, tenant, group)
	}
	lv, err := e.Dial(ctx, p.LibvirtURI)
	if err != nil {
		return nil, fmt.Errorf("%w: %s unreachable: %v", ErrLibvirt, p.LibvirtURI, err)
	}
	defer lv.Close()
	for _, vm := range st.VMs {
		info, err := lv.LookupDomain(ctx, vm.Domain)
		if err != nil || info.UUID != vm.UUID || !info.Running {
			return nil, fmt.Errorf("%w: standby %s is not running (%v): start it, or undo the failover", ErrLibvirt, vm.Domain, err)
		}
	}
	if st.Phase != PhaseCommitting {
		st.Phase = PhaseCommitting
		if err := saveState(path, st); err != nil {
			return nil, err
		}
	}
	for _, vm := range st.VMs {
		info, _ := lv.LookupDomain(ctx, vm.Domain)
		for _, k := range vm.Disks {
			if k.Committed || !backedByNBD(info.XML, k.Target) {
				continue
			}
			if j, err := lv.BlockJobInfo(ctx, vm.Domain, k.Target); err == nil && j.Active {
				continue // a pull started before (a commit resumed)
			}
			if err := lv.BlockPull(ctx, vm.Domain, k.Target); err != nil {
				return st, fmt.Errorf("%w: commit %s of %s: %v", ErrLibvirt, k.Target, vm.Domain, err)
			}
			e.log.Info("failover commit: pulling the disk onto local storage", "domain", vm.Domain, "disk", k.Target, "overlay", k.Overlay)
		}
	}
	e.watchCommit(tenant, group)
	return st, nil
}

// watchCommit follows a group's commit in the background until every
// disk stands alone, then withdraws the view.
func (e *Engine) watchCommit(tenant, group string) {
	k := tenant + "/" + group
	e.mu.Lock()
	if e.watching[k] {
		e.mu.Unlock()
		return // one watcher per group
	}
	e.watching[k] = true
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(e.watching, k)
			e.mu.Unlock()
		}()
		for {
			// A hung libvirt must not hold the group's lock for ever.
			ctx, cancel := context.WithTimeout(e.bg, commitStepTimeout)
			done, err := e.commitStep(ctx, tenant, group)
			cancel()
			if err != nil {
				e.log.Error("failover commit", "tenant", tenant, "group", group, "err", err)
			}
			if done {
				return
			}
			select {
			case <-e.bg.Done():
				return
			case <-time.After(commitPoll):
			}
		}
	}()
}

// commitStep checks each disk once; done is true when the commit ended.
func (e *Engine) commitStep(ctx context.Context, tenant, group string) (done bool, err error) {
	unlock, err := e.lock(tenant, group)
	if err != nil {
		return false, nil // an operation runs: next time
	}
	defer unlock()
	p, err := e.plan(tenant, group)
	if err != nil {
		return true, err
	}
	path := statePath(p, tenant, group)
	st, err := loadState(path)
	if err != nil {
		return false, err // try again: a commit under way is not given up
	}
	if st == nil || st.Phase != PhaseCommitting {
		return true, nil
	}
	lv, err := e.Dial(ctx, p.LibvirtURI)
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrLibvirt, err)
	}
	defer lv.Close()
	all, changed := true, false
	for i := range st.VMs {
		vm := &st.VMs[i]
		for k := range vm.Disks {
			d := &vm.Disks[k]
			if d.Committed {
				continue
			}
			j, err := lv.BlockJobInfo(ctx, vm.Domain, d.Target)
			if err != nil {
				return false, fmt.Errorf("%w: %v", ErrLibvirt, err)
			}
			// The XML after the job's state: a pull that ended in between
			// shows as ended with its result, never as ended early.
			info, err := lv.LookupDomain(ctx, vm.Domain)
			if err != nil {
				return false, fmt.Errorf("%w: %v", ErrLibvirt, err)
			}
			switch {
			case j.Active:
				d.Pulled, d.Total = j.Cur, j.End
				all = false
			case !backedByNBD(info.XML, d.Target):
				d.Committed, d.Pulled, d.Total, changed = true, d.Size, d.Size, true
				e.log.Info("failover commit: disk stands alone", "domain", vm.Domain, "disk", d.Target)
			default:
				// The pull ended without its result (failed, or cancelled
				// by someone): start it again.
				all = false
				if err := lv.BlockPull(ctx, vm.Domain, d.Target); err != nil {
					return false, fmt.Errorf("%w: commit %s of %s again: %v", ErrLibvirt, d.Target, vm.Domain, err)
				}
				e.log.Warn("failover commit: the pull ended early; started again", "domain", vm.Domain, "disk", d.Target)
			}
		}
	}
	if !all {
		if changed {
			return false, saveState(path, st)
		}
		return false, nil
	}
	st.Phase, st.Committed = PhaseCommitted, time.Now().UTC()
	if err := saveState(path, st); err != nil {
		return false, err
	}
	var errs []error
	if err := e.site.Withdraw(st.Export); err != nil {
		errs = append(errs, err)
	}
	if err := e.unlisten(st); err != nil {
		errs = append(errs, err)
	}
	e.log.Info("failover committed: the standbys need nothing of the replica daemon", "tenant", tenant, "group", group)
	return true, errors.Join(errs...)
}

// backedByNBD reports whether a domain's disk (by target) still reads
// from an NBD backing store.
func backedByNBD(domXML, target string) bool {
	var d struct {
		Disks []struct {
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
			Inner []byte `xml:",innerxml"`
		} `xml:"devices>disk"`
	}
	if xml.Unmarshal([]byte(domXML), &d) != nil {
		return true // unknown: not committed
	}
	for _, k := range d.Disks {
		if k.Target.Dev != target {
			continue
		}
		var b struct {
			Backing []struct {
				Source struct {
					Protocol string `xml:"protocol,attr"`
				} `xml:"source"`
				Inner []byte `xml:",innerxml"`
			} `xml:"backingStore"`
		}
		if xml.Unmarshal(append(append([]byte("<d>"), k.Inner...), "</d>"...), &b) != nil {
			return true
		}
		for _, bs := range b.Backing {
			if bs.Source.Protocol == "nbd" {
				return true
			}
			if backedByNBD("<domain><devices><disk><target dev='x'/>"+string(bs.Inner)+"</disk></devices></domain>", "x") {
				return true
			}
		}
		return false
	}
	return false
}
