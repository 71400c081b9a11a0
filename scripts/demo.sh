#!/bin/sh
# make demo: a good and a bad release of the demo shop, validated by the
# watcher against a real Prometheus; the good one passes, the bad one is
# rolled back. Shows the history and the status page, then cleans up.
# About 90 seconds, on spare ports of this machine.
set -eu
cd "$(dirname "$0")/.."

DEMO=/tmp/rollback-watcher-demo
W=bin/watcher
NATS=nats://127.0.0.1:14222
WEB=127.0.0.1:19797
command -v prometheus >/dev/null || { echo "demo: prometheus is missing: run 'make deps' first" >&2; exit 1; }
for p in 14222 19090 19100 19797; do
	if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
		echo "demo: port $p is in use (another demo or quick start running?)" >&2; exit 1
	fi
done

pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$DEMO"
}
trap cleanup EXIT INT TERM
say() { printf '\ndemo: %s\n' "$*"; }

go build -o bin/demo-shop ./examples/demo-shop
rm -rf "$DEMO" && mkdir -p "$DEMO/releases"
for r in 2026.11.24-3:120 2026.11.25-1:130 2026.11.25-2:6; do
	mkdir -p "$DEMO/releases/${r%%:*}" && echo "${r##*:}" > "$DEMO/releases/${r%%:*}/orders_per_minute"
done
$W activate --link="$DEMO/current" --release="$DEMO/releases/2026.11.24-3" >/dev/null

bin/demo-shop -listen 127.0.0.1:19100 -link "$DEMO/current" 2>"$DEMO/shop.log" & pids="$pids $!"
prometheus --config.file=examples/quickstart/prometheus.yml --storage.tsdb.path="$DEMO/prometheus" \
	--web.listen-address=127.0.0.1:19090 2>"$DEMO/prometheus.log" & pids="$pids $!"
$W run --rules='rules/*.yml' --nats.listen=127.0.0.1:14222 --storage.path="$DEMO/data" \
	--prometheus.url=http://127.0.0.1:19090 --web.listen-address=$WEB 2>"$DEMO/watcher.log" & pids="$pids $!"

say "waiting for the shop to sell at its normal rate..."
until curl -gfsS 'http://127.0.0.1:19090/api/v1/query?query=sum(rate(shop_orders_total[10s]))*60>100' 2>/dev/null | grep -q '"value"'; do sleep 1; done
until curl -fsS http://$WEB/-/ready >/dev/null 2>&1; do sleep 1; done

say "deploying the good release 2026.11.25-1 (130 orders/min); its validation window is one minute"
$W activate --link="$DEMO/current" --release="$DEMO/releases/2026.11.25-1" >/dev/null
good=$($W publish --nats.url=$NATS --service=demo-shop --environment=local --version=2026.11.25-1 --previous-version=2026.11.24-3)
i=0
until $W history --nats.url=$NATS --service=demo-shop --json | grep -q '"kind":"run.passed"'; do
	i=$((i + 1)); [ $i -lt 100 ] || { echo "demo: the good release was not validated after 100s; see $DEMO/watcher.log" >&2; exit 1; }
	sleep 1
done
say "the good release passed; deploying the bad release 2026.11.25-2 (6 orders/min)"
$W activate --link="$DEMO/current" --release="$DEMO/releases/2026.11.25-2" >/dev/null
$W publish --nats.url=$NATS --service=demo-shop --environment=local --version=2026.11.25-2 --previous-version=2026.11.25-1 >/dev/null
i=0
until [ "$(readlink "$DEMO/current")" = "$DEMO/releases/2026.11.25-1" ]; do
	i=$((i + 1)); [ $i -lt 60 ] || { echo "demo: no rollback after 60s; see $DEMO/watcher.log" >&2; exit 1; }
	sleep 1
done
sleep 1

say "the history (watcher history):"
$W history --nats.url=$NATS --service=demo-shop
run=$($W history --nats.url=$NATS --service=demo-shop --json | sed -n 's/.*"kind":"run.failed","run_id":"\([^"]*\)".*/\1/p' | head -1)
say "the bad release's run, measurement by measurement (watcher history --run):"
$W history --nats.url=$NATS --run="$run"
say "$DEMO/current -> $(readlink "$DEMO/current"): rolled back from 2026.11.25-2 (deploy $good passed before it)"

if curl -fsS "http://$WEB/" -o /tmp/rollback-watcher-demo.html 2>/dev/null; then
	say "the status page (http://$WEB/) is saved in /tmp/rollback-watcher-demo.html"
	if command -v chromium >/dev/null 2>&1; then
		chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1600 \
			--screenshot=/tmp/rollback-watcher-demo.png "http://$WEB/" >/dev/null 2>&1 &&
			say "and as a picture in /tmp/rollback-watcher-demo.png"
	fi
	if [ -t 0 ] && [ -z "${CI:-}" ]; then
		printf '\ndemo: the page is live at http://%s/ ; press Enter to stop and clean up ' "$WEB"
		read -r _ || true
	fi
fi
say "cleaning up"
