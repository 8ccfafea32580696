# The two commands a newcomer needs: `make demo` and `make test`.
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: setup build man demo test bench fuzz chaos

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
	$(GO) test -run '^$$' -bench FailoverRTO -benchtime 1x -timeout 45m ./integration

# Runs every fuzz target for FUZZTIME each (default 30s).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# The chaos suite's long run (integration/chaos, TestChaos): a seeded,
# randomized schedule of FAULTS faults (default 1000, about an hour here)
# against the real daemons over mTLS, a real guest and the suite's own
# fault-injecting proxy; `make test` runs a short version. SEED replays a
# run (default: a new random seed, printed), KINDS=a,b keeps only those
# fault kinds, CHAOS_TIME=10m stops starting rounds after that long,
# OPEN=count counts the suite's open findings (chaos.OpenFindings) instead
# of failing on them. The output ends with the summary table.
SEED ?= random
FAULTS ?= 1000
KINDS ?=
OPEN ?= fail
CHAOS_TIME ?=
chaos: setup
	@summary=$$(mktemp /tmp/qcdp-chaos-summary.XXXXXX); \
	QCDP_CHAOS_SEED='$(SEED)' QCDP_CHAOS_FAULTS='$(FAULTS)' QCDP_CHAOS_KINDS='$(KINDS)' QCDP_CHAOS_OPEN='$(OPEN)' \
	QCDP_CHAOS_TIME='$(CHAOS_TIME)' QCDP_CHAOS_SUMMARY=$$summary \
	$(GO) test -count=1 -timeout 4h -run '^TestChaos$$' -v ./integration/; rc=$$?; \
	echo; cat $$summary; rm -f $$summary; exit $$rc
