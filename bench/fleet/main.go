// Command fleet measures a fleet rollback over SSH both ways, in one run: the
// shell procedure the watcher replaces (parallel-ssh running the seed's
// rollback, made atomic) and the watcher's executor (SFTP over a pool of
// connections, cold and warm), against the same real OpenSSH "hosts" on
// this machine (127.0.0.2, 127.0.0.3, ..., 16 per sshd process).
//
//	sudo go run ./bench/fleet [-hosts 64] [-runs 7] [-pssh-runs 5] [-rtt 0,20ms,100ms]
//
// With -rtt above 0, every host is reached through a proxy that adds that
// round trip time (latency mode, proxy.go) and counts the round trips each
// host's rollback waited for; 0 is loopback, without the proxy. Each round
// trip time in the list is one phase, with every side measured in it.
//
// It needs root: it creates the user the rollbacks log in as (rwbench,
// shell /bin/sh), installs pssh when missing and runs sshd. Everything else
// lives in a temporary directory removed on exit; the sshd processes and
// their connections are killed on exit, Ctrl-C included.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/rollback-watcher/watcher/internal/rollback"
	"github.com/rollback-watcher/watcher/internal/sshkit"
)

type options struct {
	hosts      int
	runs       int
	psshRuns   int
	user       string
	cpuProfile string
	keep       bool
	sides      string
	quiet      time.Duration
	rtts       []time.Duration
	maxOpen    int
	// connectTimeout is the policy's connect_timeout.
	connectTimeout time.Duration
}

// maxHosts: addresses 127.0.0.2 ... 127.0.3.251, 250 a /24.
const maxHosts = 1000

func main() { os.Exit(run()) }

func run() int {
	if len(os.Args) > 1 && os.Args[1] == proxyChildArg {
		return proxyChild()
	}
	var o options
	rtt := "0"
	flag.IntVar(&o.hosts, "hosts", 64, fmt.Sprintf("SSH hosts (127.0.0.2 upwards, 16 per sshd process, at most %d); parallel-ssh -p and the policy's parallelism are the same number", maxHosts))
	flag.IntVar(&o.runs, "runs", 7, "measured runs of the watcher, cold and warm each, per round trip time")
	flag.IntVar(&o.psshRuns, "pssh-runs", 5, "measured runs of parallel-ssh, per round trip time")
	flag.StringVar(&rtt, "rtt", rtt, "round trip times to measure at, comma-separated (0,20ms,100ms): above 0, every host is reached through a proxy adding it (latency mode); 0 is loopback without the proxy")
	flag.DurationVar(&o.connectTimeout, "connect-timeout", 10*time.Second, "the policy's connect_timeout: every handshake of a cold rollback must finish within it, and with hundreds of hosts on this machine's cores they queue for CPU")
	flag.IntVar(&o.maxOpen, "max-open", 0, fmt.Sprintf("MaxOpen of the watcher's SSH pools; 0: the pool's default (%d), or the number of hosts if larger", rollback.DefaultSSHMaxOpen))
	flag.StringVar(&o.user, "user", "rwbench", "user the rollbacks log in as (created with shell /bin/sh if missing)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file; the watcher's timed sections carry the label section=warm or section=cold (go tool pprof -tagfocus section=warm ...)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (sshd logs, fleet) for inspection")
	flag.DurationVar(&o.quiet, "quiet", 500*time.Millisecond, "pause before every timed run, after the reset, so that the previous run's teardown (the sshd connections exiting) is over")
	flag.StringVar(&o.sides, "sides", "pssh,cold,warm", "the sides to measure, for profiling one of them; the ratios need all three")
	flag.Parse()
	if o.hosts < 1 || o.hosts > maxHosts || o.runs < 1 || o.psshRuns < 1 {
		fmt.Fprintf(os.Stderr, "fleet: -hosts must be 1..%d, -runs and -pssh-runs at least 1\n", maxHosts)
		return 2
	}
	for _, s := range strings.Split(rtt, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d < 0 {
			fmt.Fprintf(os.Stderr, "fleet: -rtt %q: want round trip times such as 0,20ms,100ms\n", rtt)
			return 2
		}
		o.rtts = append(o.rtts, d)
	}
	if o.maxOpen <= 0 {
		o.maxOpen = max(o.hosts, rollback.DefaultSSHMaxOpen)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintf(os.Stderr, "fleet: must run as root (it creates the user %s, installs pssh when missing and runs sshd): sudo go run ./bench/fleet, or sudo make bench-fleet\n", o.user)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := bench(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		return 1
	}
	return 0
}

// hostIPs are the hosts' addresses: 127.0.0.2 upwards, 250 to a /24.
func hostIPs(n int) []string {
	ips := make([]string, n)
	for i := range ips {
		ips[i] = fmt.Sprintf("127.0.%d.%d", i/250, i%250+2)
	}
	return ips
}

func bench(ctx context.Context, o options) (err error) {
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if err := adoptOrphans(); err != nil {
		return err
	}
	uid, gid, err := ensureUser(o.user)
	if err != nil {
		return err
	}
	pssh, err := ensurePSSH()
	if err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "rwbench-fleet-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	// The benchmark user must reach its fleet and authorized_keys.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	identity := filepath.Join(dir, "id_ed25519")
	clientKey, err := sshkit.WriteKey(identity, "rollback-watcher fleet benchmark")
	if err != nil {
		return fmt.Errorf("client key: %w", err)
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientKey), 0o600); err != nil {
		return err
	}
	// sshd reads authorized_keys as the user logging in.
	if err := os.Chown(authorized, uid, gid); err != nil {
		return err
	}

	ips := hostIPs(o.hosts)
	srv, err := startServers(dir, ips, authorized)
	defer srv.stop()
	if err != nil {
		return err
	}
	// The proxies listen on the hosts' addresses, on a port of their own.
	proxyPort := 0
	if slices.ContainsFunc(o.rtts, func(d time.Duration) bool { return d > 0 }) {
		if proxyPort, err = sshkit.FreePort(ips); err != nil {
			return fmt.Errorf("a port for the proxies: %w", err)
		}
	}
	knownHosts := filepath.Join(dir, "known_hosts")
	if err := srv.knownHosts(knownHosts, proxyPort); err != nil {
		return err
	}
	fl := fleet{root: dir, ips: ips, uid: uid, gid: gid}
	if err := fl.create(); err != nil {
		return fmt.Errorf("creating the fleet: %w", err)
	}
	env := &phaseEnv{o: o, dir: dir, identity: identity, knownHosts: knownHosts, pssh: pssh,
		srv: srv, fl: fl, proxyPort: proxyPort, rec: &recorder{}}

	fmt.Printf("fleet rollback benchmark, %s\n", time.Now().Format("2006-01-02 15:04 MST"))
	fmt.Printf("machine: %s\n", machine())
	fmt.Printf("software: %s; %s; %s\n", commandVersion("ssh", "-V"), commandVersion(pssh, "--version"), runtime.Version())
	fmt.Printf("load average at start: %s\n", loadavg())
	steal0 := cpuTimes()
	fmt.Printf("fleet: %d hosts %s ... %s, %d sshd processes on port %d, user %s (/bin/sh), one fresh host key and client key\n",
		o.hosts, srv.addrs[0], srv.addrs[len(srv.addrs)-1], len(srv.cmds), srv.port, o.user)
	fmt.Printf("side A: %s %s\n", pssh, shellJoin(psshArgs(env, "HOSTS-FILE")))
	fmt.Printf("side B: rollback.Executor.Execute, SSHPool dialer (MaxOpen %d), policy %s (parallelism %d, connect_timeout %s), recording auditor, no NATS\n",
		o.maxOpen, filepath.Join(dir, "rules.yml"), o.hosts, o.connectTimeout)
	fmt.Printf("each run: fleet reset (every link back on v2, markers removed, previousVersion restored, sync) and a %s pause, untimed;"+
		" the watcher's runs also start after a runtime.GC(), the warm ones after every host's connection was dialed or checked and its link read;"+
		" sides interleaved, one untimed warm-up round first, per round trip time\n", o.quiet)
	if proxyPort > 0 {
		fmt.Printf("latency mode: every host through a proxy on its own address, port %d, in a child process: each chunk delivered half a round trip after it was sent, each way, a new connection held one round trip (its TCP handshake); the proxies count the round trips waited for\n", proxyPort)
	}

	var phases []*phase
	for _, rtt := range o.rtts {
		fmt.Printf("\nround trip time %s\n", rttName(rtt))
		ph, err := runPhase(ctx, env, rtt)
		if err != nil {
			return fmt.Errorf("round trip time %s: %w", rttName(rtt), err)
		}
		phases = append(phases, ph)
	}
	fmt.Println()
	report(phases, o.hosts)

	fmt.Printf("load average at end: %s", loadavg())
	if steal1 := cpuTimes(); steal1.total > steal0.total {
		fmt.Printf("; CPU time stolen by the hypervisor during the benchmark: %.1f%%", 100*float64(steal1.steal-steal0.steal)/float64(steal1.total-steal0.total))
	}
	fmt.Println()
	return nil
}

var errNoSides = errors.New("-sides: none of pssh, cold, warm")
