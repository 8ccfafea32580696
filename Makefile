# The two commands a newcomer needs: `make demo` and `make test`.
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: setup build demo test bench fuzz

setup:
	bash integration/setup.sh

build: setup
	$(GO) build -o bin/qcdp ./cmd/qcdp

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
