# The two commands a newcomer needs: `make demo` and `make test`.
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: setup build man demo test bench fuzz

# The version `qcdp --version` prints: git describe, or "dev" outside a
# git work tree.
VERSION ?= $(or $(shell git describe --tags --always --dirty 2>/dev/null),dev)
LDFLAGS := -X main.version=$(VERSION)

setup:
	bash integration/setup.sh

build: setup
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/qcdp ./cmd/qcdp

# A man page per command, from the command tree (qcdp.1, qcdp-export.1, ...).
# Needs nothing but Go: qcdp has no cgo.
MANDIR ?= man
man:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/qcdp ./cmd/qcdp
	bin/qcdp gen-man $(MANDIR)

demo: build
	$(GO) run ./integration/demo

# Every test: unit, fuzz seeds, interoperability with the real NBD tools and
# QEMU. Needs root on a fresh machine (it installs packages).
test: setup
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 25m ./...

bench: build
	$(GO) run ./integration/bench

# Runs every fuzz target for FUZZTIME each (default 30s).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done
