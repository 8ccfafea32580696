//go:build linux

package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
)

// watchPowerButton turns a press of the ACPI power button (what libvirt's
// `virsh shutdown` and a planned failover's clean shutdown send) into the
// console command "poweroff": the workload ends, everything is synced,
// the guest powers off. Without the button (no ACPI, no evdev) it does
// nothing.
func watchPowerButton(cmds chan<- string) {
	names, _ := filepath.Glob("/sys/class/input/input*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != "Power Button" {
			continue
		}
		evs, _ := filepath.Glob(filepath.Join(filepath.Dir(n), "event*"))
		for _, ev := range evs {
			f, err := os.Open("/dev/input/" + filepath.Base(ev))
			if err != nil {
				continue
			}
			go readPowerEvents(f, cmds)
		}
	}
}

// readPowerEvents reads struct input_event (24 bytes on 64-bit: a
// timeval, type, code, value) until a key press of KEY_POWER.
func readPowerEvents(f *os.File, cmds chan<- string) {
	const evKey, keyPower = 1, 116
	buf := make([]byte, 24)
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
		typ, code := binary.LittleEndian.Uint16(buf[16:]), binary.LittleEndian.Uint16(buf[18:])
		if typ == evKey && code == keyPower && int32(binary.LittleEndian.Uint32(buf[20:])) == 1 {
			report("QCDP-POWER-BUTTON t=%d", monotonic())
			cmds <- "poweroff"
			return
		}
	}
}
