#!/bin/sh
# Installs what the tests need that Go does not ship, when it is missing:
# the real Prometheus server (Debian package "prometheus"), OpenSSH's sshd
# ("openssh-server") and PostgreSQL for the data rollback tests
# ("postgresql"; its server binaries live off the PATH), and for the deploy/
# kit's checks: promtool (in "prometheus"), amtool ("prometheus-alertmanager")
# and systemd-analyze ("systemd", with "procps" for /bin/kill), and for the
# image test (deploy/image_test.go): podman with runc, which runs where
# crun cannot (cgroups v1 beside v2), and the CA bundle the image carries
# ("ca-certificates"). Idempotent.
set -eu

need=""
command -v prometheus >/dev/null 2>&1 || need="$need prometheus"
# /usr/sbin is not on a normal user's PATH: test for the file the SSH tests run.
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
command -v psql >/dev/null 2>&1 || need="$need postgresql-client"
command -v amtool >/dev/null 2>&1 || need="$need prometheus-alertmanager"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
# The unit's ExecReload runs /bin/kill; systemd-analyze verify checks it exists.
[ -x /bin/kill ] || need="$need procps"
# `make image` and the image test: the engine, the runtime, the CA bundle.
command -v podman >/dev/null 2>&1 || need="$need podman"
command -v runc >/dev/null 2>&1 || need="$need runc"
[ -s /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates"
# The status page test screenshots / in a real headless browser.
command -v chromium >/dev/null 2>&1 || need="$need chromium"

if [ -n "$need" ]; then
	echo "deps: installing Debian packages:$need" >&2
	if [ "$(id -u)" -eq 0 ]; then
		SUDO=""
	elif command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "deps: need root to install$need; install them (apt-get install$need) and run again" >&2
		exit 1
	fi
	$SUDO apt-get update -qq
	# The packages' init scripts must not start a system Prometheus,
	# Alertmanager or sshd: tests start their own on free ports.
	cleanup=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
		$SUDO chmod +x /usr/sbin/policy-rc.d
		cleanup="/usr/sbin/policy-rc.d"
	fi
	RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
	[ -z "$cleanup" ] || $SUDO rm -f "$cleanup"
fi

go mod download
