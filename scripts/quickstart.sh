#!/bin/sh
# The quick start: a pretend shop, a real Prometheus, the watcher with its
# embedded NATS; a good release, then a bad one that the watcher rolls back.
# Everything runs on this machine on spare ports and is stopped at the end.
set -eu
cd "$(dirname "$0")/.."

DEMO=/tmp/rollback-watcher-demo
W=bin/watcher
NATS=nats://127.0.0.1:14222
command -v prometheus >/dev/null || { echo "quickstart: prometheus is missing: run 'make deps' first" >&2; exit 1; }

pids=""
cleanup() { for p in $pids; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

go build -o bin/demo-shop ./examples/demo-shop
rm -rf "$DEMO" && mkdir -p "$DEMO/releases/2026.11.24-3" "$DEMO/releases/2026.11.25-1"
echo 120 > "$DEMO/releases/2026.11.24-3/orders_per_minute"   # the good release
echo 6   > "$DEMO/releases/2026.11.25-1/orders_per_minute"   # the bad one
$W activate --link="$DEMO/current" --release="$DEMO/releases/2026.11.24-3"

bin/demo-shop -listen 127.0.0.1:19100 -link "$DEMO/current" 2>"$DEMO/shop.log" & pids="$pids $!"
prometheus --config.file=examples/quickstart/prometheus.yml --storage.tsdb.path="$DEMO/prometheus" \
	--web.listen-address=127.0.0.1:19090 2>"$DEMO/prometheus.log" & pids="$pids $!"
$W run --rules='rules/*.yml' --nats.listen=127.0.0.1:14222 --storage.path="$DEMO/data" \
	--prometheus.url=http://127.0.0.1:19090 --web.listen-address=127.0.0.1:19797 2>"$DEMO/watcher.log" & pids="$pids $!"

echo "quickstart: waiting for the shop to sell at its normal rate..."
until curl -gfsS 'http://127.0.0.1:19090/api/v1/query?query=sum(rate(shop_orders_total[10s]))*60>100' 2>/dev/null | grep -q '"value"'; do sleep 1; done
until curl -fsS http://127.0.0.1:19797/-/ready >/dev/null 2>&1; do sleep 1; done

echo "quickstart: deploying the bad release 2026.11.25-1"
$W activate --link="$DEMO/current" --release="$DEMO/releases/2026.11.25-1"
$W publish --nats.url=$NATS --service=demo-shop --environment=local --version=2026.11.25-1 --previous-version=2026.11.24-3

echo "quickstart: waiting for the watcher's verdict..."
i=0
until [ "$(readlink "$DEMO/current")" = "$DEMO/releases/2026.11.24-3" ]; do
	i=$((i + 1)); [ $i -lt 90 ] || { echo "quickstart: no rollback after 90s; see $DEMO/watcher.log" >&2; exit 1; }
	sleep 1
done
sleep 1
echo
$W history --nats.url=$NATS --service=demo-shop
run=$($W history --nats.url=$NATS --service=demo-shop --json | sed -n 's/.*"kind":"run.failed","run_id":"\([^"]*\)".*/\1/p' | head -1)
echo
$W history --nats.url=$NATS --run="$run"
echo
echo "quickstart: $DEMO/current -> $(readlink "$DEMO/current") (rolled back); marker:"
cat "$DEMO/releases/2026.11.25-1/ROLLED_BACK"; echo
