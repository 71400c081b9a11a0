# Rollback Watcher. `make run` starts the watcher on embedded defaults;
# `make test` installs what the tests need (once), runs `make lint`, then
# every test.
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

.PHONY: all build run test deps lint check-rules vet fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/watcher

run: build
	./$(BIN) run --rules='rules/*.yml' --storage.path=data

deps:
	./scripts/deps.sh

test: deps lint
	$(GO) test $(TESTFLAGS) ./...

# Static checks: go vet, staticcheck, and goimports with the module's own
# imports grouped last. The linters run at pinned versions through the Go
# module proxy, so go.mod stays the watcher's; the first run downloads and
# builds them (about a minute), later ones take seconds. The import walls
# between packages are a test: internal/layering.
MODULE      := github.com/rollback-watcher/watcher
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOIMPORTS   := golang.org/x/tools/cmd/goimports@v0.52.0

lint:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@out=$$($(GO) run $(GOIMPORTS) -local $(MODULE) -l .) || exit 1; \
	if [ -n "$$out" ]; then \
		echo "goimports: these files need formatting; run $(GO) run $(GOIMPORTS) -local $(MODULE) -w on them:"; \
		echo "$$out"; exit 1; \
	fi

# The container image, IMAGE, built from deploy/compose/Dockerfile with
# podman when it is installed, else docker (BuildKit: Docker 23 or later).
# Nothing is pulled: deploy/compose/image-context.sh compiles the static
# binary here into IMAGE_CONTEXT, which stands in for the Dockerfile's Go
# stage (deploy/README.md "The image"). IMAGEFLAGS passes flags to the
# engine's build. deploy/image_test.go builds and runs it.
IMAGE         ?= rollback-watcher/watcher:dev
IMAGE_CONTEXT ?= bin/image
ENGINE        ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
IMAGEFLAGS    ?=

.PHONY: image
image:
	GO=$(GO) VERSION=$(VERSION) REVISION=$(REVISION) deploy/compose/image-context.sh $(IMAGE_CONTEXT)
	$(ENGINE) build $(IMAGEFLAGS) --build-context build=$(IMAGE_CONTEXT) -f deploy/compose/Dockerfile -t $(IMAGE) .

check-rules: build
	./$(BIN) check 'rules/*.yml'

clean:
	rm -rf bin data

# Fuzz every fuzz target of the decoders of outside input for FUZZTIME
# each (scripts/fuzz.sh). A crash is written to the package's
# testdata/fuzz/<target>/ and fails the run.
FUZZTIME ?= 10s

fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

# The fleet rollback benchmark (bench/fleet, figures in BENCHMARKS.md):
# parallel-ssh against the watcher's executor on 64 sshd "hosts" on this
# machine, in one run. Needs root: it creates the user rwbench and installs
# pssh when missing. BENCHFLAGS passes flags, e.g. BENCHFLAGS='-runs 9'.
BENCHFLAGS ?=

.PHONY: bench-fleet
bench-fleet:
	$(GO) run ./bench/fleet $(BENCHFLAGS)

# Scale (bench/runs, figures in BENCHMARKS.md): 10,000 concurrent runs on
# one watcher (memory per run, Prometheus requests per evaluation time,
# lag) and the durable ingest rate against raw JetStream publishing.
.PHONY: bench-runs
bench-runs:
	$(GO) run ./bench/runs $(BENCHFLAGS)

# The same 10,000 runs with comparison checks (pre_deploy, canary and
# counts; README "Comparisons"), deployed over 2 minutes and watched until
# the first are near the end of their 10m window (about 11 minutes).
.PHONY: bench-runs-compare
bench-runs-compare:
	$(GO) run ./bench/runs -compare -intervals 40 -events 0 $(BENCHFLAGS)

# The demo: a good and a bad release of a sample service, the bad one
# rolled back, the notifications, the bad one again with its rollback held
# and cancelled, the history and the status page shown, everything stopped
# and removed at the end (about two minutes).
.PHONY: demo
demo: build deps
	./scripts/demo.sh

# Backtest (bench/backtest, figures in BENCHMARKS.md): 1,000 past deploys
# with 5 checks each replayed on a real Prometheus backfilled by promtool.
.PHONY: bench-backtest
bench-backtest:
	$(GO) run ./bench/backtest $(BENCHFLAGS)
