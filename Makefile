# Rollback Watcher. `make run` starts the watcher on embedded defaults;
# `make test` installs what the tests need (once) and runs every test.
GO       ?= go
BIN      := bin/watcher
PKG      := github.com/prometheus/common/version
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X $(PKG).Version=$(VERSION) -X $(PKG).Revision=$(REVISION) \
            -X $(PKG).Branch=main -X $(PKG).BuildUser=$(USER) \
            -X $(PKG).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
# Integration tests start real servers; two packages at a time keeps a
# 2-core machine responsive.
TESTFLAGS ?= -count=1 -p 2 -timeout 15m

.PHONY: all build run test deps check-rules vet fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/watcher

run: build
	./$(BIN) run --rules='rules/*.yml' --storage.path=data

deps:
	./scripts/deps.sh

test: deps
	$(GO) vet ./...
	$(GO) test $(TESTFLAGS) ./...

check-rules: build
	./$(BIN) check 'rules/*.yml'

clean:
	rm -rf bin data

# The fleet rollback benchmark (bench/fleet, figures in BENCHMARKS.md):
# parallel-ssh against the watcher's executor on 64 sshd "hosts" on this
# machine, in one run. Needs root: it creates the user rwbench and installs
# pssh when missing. BENCHFLAGS passes flags, e.g. BENCHFLAGS='-runs 9'.
BENCHFLAGS ?=

.PHONY: bench-fleet
bench-fleet:
	$(GO) run ./bench/fleet $(BENCHFLAGS)
