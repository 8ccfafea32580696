// Package configs holds the TOML policy schema (BurntSushi/toml), its
// defaults, validation that names the file, line and key of a bad value, and
// example policies.
//
// Status: planned (issue "Capture on running VMs"); nothing here yet.
package configs
