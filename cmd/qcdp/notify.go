package main

import (
	"log/slog"

	"github.com/coreos/go-systemd/v22/daemon"
)

// sdNotify tells systemd a daemon's state (sd_notify(3): READY=1,
// STOPPING=1, STATUS=...); without NOTIFY_SOCKET it does nothing. A
// failure is logged: the daemon goes on, and systemd's own timeouts act.
// The host daemon's notifications, watchdog included, are
// protect.Supervisor's.
func sdNotify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("systemd notification failed", "state", state, "err", err)
	}
}
