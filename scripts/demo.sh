#!/bin/sh
# make demo: a good and a bad release of the demo shop, validated by the
# watcher against a real Prometheus; the good one passes, the bad one is
# rolled back, and a loopback receiver standing for Slack and a webhook
# shows the notifications. Then the bad release again, under a policy that
# holds its rollback: the hold is announced and cancelled with `watcher
# cancel`. Shows the history and the status page, then cleans up.
# About two minutes, on spare ports of this machine.
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
# waitfor SECONDS WHAT COMMAND...: runs COMMAND each second until it
# succeeds, or gives up saying what did not happen.
waitfor() {
	n=$1 what=$2
	shift 2
	i=0
	until "$@"; do
		i=$((i + 1)); [ $i -lt "$n" ] || { echo "demo: $what after ${n}s; see $DEMO/watcher.log" >&2; exit 1; }
		sleep 1
	done
}

go build -o bin/demo-shop ./examples/demo-shop
go build -o bin/webhook-receiver ./examples/webhook-receiver
rm -rf "$DEMO" && mkdir -p "$DEMO/releases"
for r in 2026.11.24-3:120 2026.11.25-1:130 2026.11.25-2:6; do
	mkdir -p "$DEMO/releases/${r%%:*}" && echo "${r##*:}" > "$DEMO/releases/${r%%:*}/orders_per_minute"
done
$W activate --link="$DEMO/current" --release="$DEMO/releases/2026.11.24-3" >/dev/null

bin/demo-shop -listen 127.0.0.1:19100 -link "$DEMO/current" 2>"$DEMO/shop.log" & pids="$pids $!"
# Notifications go to a receiver on a free loopback port, as Slack
# (incoming-webhook JSON) and as a signed webhook (README "Notifications,
# holds and verification").
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO/hook-secret"
bin/webhook-receiver -addr-file "$DEMO/receiver-url" -secret-file "$DEMO/hook-secret" -out "$DEMO/notifications.log" \
	2>"$DEMO/receiver.log" & pids="$pids $!"
until [ -s "$DEMO/receiver-url" ]; do sleep 0.1; done
echo "$(cat "$DEMO/receiver-url")/services/T0/B0/demo" >"$DEMO/slack-url"
echo "$(cat "$DEMO/receiver-url")/hooks/audit" >"$DEMO/hook-url"
cat >"$DEMO/watcher.yml" <<'YAML'
notify:
  - name: demo-slack
    kind: slack
    url_file: slack-url
    match: {service: demo-shop}
    on: [run.failed, rollback.completed, rollback.held, rollback.cancelled]
  - name: demo-hook
    kind: webhook
    url_file: hook-url
    secret_file: hook-secret
    on: [rollback.completed, rollback.held, rollback.cancelled]
YAML
prometheus --config.file=examples/quickstart/prometheus.yml --storage.tsdb.path="$DEMO/prometheus" \
	--web.listen-address=127.0.0.1:19090 2>"$DEMO/prometheus.log" & pids="$pids $!"
$W run --config.file="$DEMO/watcher.yml" --rules='rules/*.yml' --nats.listen=127.0.0.1:14222 --storage.path="$DEMO/data" \
	--prometheus.url=http://127.0.0.1:19090 --web.listen-address=$WEB --web.external-url=http://$WEB/ \
	2>"$DEMO/watcher.log" & pids="$pids $!"

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
waitfor 30 "no notification" grep -q 'rollback.completed (delivery' "$DEMO/notifications.log"
sleep 1
say "the notifications the receiver got (Slack messages, and the signed webhook):"
cat "$DEMO/notifications.log"
: >"$DEMO/notifications.log"

say "the bad release 2026.11.25-2 again, in local-hold, whose policy holds rollbacks for 2 minutes"
$W activate --link="$DEMO/current" --release="$DEMO/releases/2026.11.25-2" >/dev/null
$W publish --nats.url=$NATS --service=demo-shop --environment=local-hold --version=2026.11.25-2 --previous-version=2026.11.25-1 >/dev/null
waitfor 60 "no rollback.held" grep -q ':hourglass:' "$DEMO/notifications.log"
held=$($W history --nats.url=$NATS --service=demo-shop --environment=local-hold --kind=rollback.held --json)
request=$(echo "$held" | sed -n 's/.*"request_id":"\([^"]*\)".*/\1/p' | head -1)
link=$(echo "$held" | sed -n 's/.*"cancel_url":"\([^"]*\)".*/\1/p' | head -1 | sed 's/\\u0026/\&/g')
waitfor 10 "no rollback.held webhook" grep -q 'rollback.held (delivery' "$DEMO/notifications.log"
say "the rollback is held, not executed; the notification, with its cancel link and command:"
$W history --nats.url=$NATS --service=demo-shop --environment=local-hold --kind=run.failed --kind='rollback.*'
cat "$DEMO/notifications.log"
: >"$DEMO/notifications.log"
say "GET on the cancel link shows a page with a form, and changes nothing (chat unfurlers fetch links):"
curl -fsS "$link" | sed -n 's:.*<h1>\(.*\)</h1>.*:  \1:p'
say "cancelling it: watcher cancel --request=$request --reason=..."
$W cancel --nats.url=$NATS --request="$request" --reason="demo: the on-call knows the dip, keep the release" --by=demo
sleep 1
$W history --nats.url=$NATS --service=demo-shop --environment=local-hold --kind='rollback.*'
waitfor 10 "no rollback.cancelled notification" grep -q 'rollback.cancelled (delivery' "$DEMO/notifications.log"
sleep 1
cat "$DEMO/notifications.log"
say "$DEMO/current -> $(readlink "$DEMO/current"): still the bad release, as the on-call decided"

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
