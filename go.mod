module github.com/qcdp/qcdp

go 1.25

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/digitalocean/go-libvirt v0.0.0-20260217163227-273eaa321819
	github.com/digitalocean/go-qemu v0.0.0-20250212194115-ee9b0668d242
	github.com/klauspost/compress v1.20.3
	golang.org/x/sys v0.41.0
)

require golang.org/x/crypto v0.48.0 // indirect
