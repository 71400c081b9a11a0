package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollback"
)

// One phase: every side measured at one round trip time.

// phaseEnv is what every phase shares: the fleet, its servers, the keys.
type phaseEnv struct {
	o                               options
	dir, identity, knownHosts, pssh string
	srv                             *servers
	fl                              fleet
	proxyPort                       int
	rec                             *recorder
}

// phase is what one round trip time measured.
type phase struct {
	rtt   time.Duration
	sides []*side
	mem   *memory // of the warm pool's connections, when measured
}

// sample is one measured run.
type sample struct {
	wall     time.Duration
	cpu      time.Duration // the client side: user+sys
	sshd     time.Duration // the server side: the sshd process trees
	flights  []int64       // round trips waited for, per host (latency mode only)
	requests int64         // SFTP requests sent (the watcher only)
}

type side struct {
	key     string // for -sides
	name    string
	cpuWhat string
	runs    int
	samples []sample
	measure func(ctx context.Context, i int) (sample, error)
}

func rttName(d time.Duration) string {
	if d == 0 {
		return "0 (loopback)"
	}
	return d.String()
}

// psshArgs is parallel-ssh's command line for the hosts in hostsFile.
func psshArgs(env *phaseEnv, hostsFile string) []string {
	return []string{
		"-p", strconv.Itoa(env.o.hosts), "-t", "120", "-i", "-h", hostsFile, "-l", env.o.user,
		"-x", "-F /dev/null -i " + env.identity,
		"-O", "UserKnownHostsFile=" + env.knownHosts, "-O", "GlobalKnownHostsFile=/dev/null",
		"-O", "StrictHostKeyChecking=yes", "-O", "BatchMode=yes", "-O", "IdentitiesOnly=yes",
		shellRollback(env.dir),
	}
}

// runPhase measures every side at one round trip time: through the
// proxies when rtt is above 0.
func runPhase(ctx context.Context, env *phaseEnv, rtt time.Duration) (*phase, error) {
	o, srv, fl := env.o, env.srv, env.fl
	// The previous phase's connections are torn down first.
	_, _ = srv.settle(0)
	addrs := srv.addrs
	var px *proxies
	if rtt > 0 {
		var err error
		if px, err = startProxies(rtt, srv.addrs, env.proxyPort); err != nil {
			return nil, err
		}
		defer px.stop()
		srv.ignore(px.pid())
		defer srv.ignore(0)
		addrs = px.addrs
	}

	// Side A: parallel-ssh running the seed's rollback, made atomic.
	hostsFile := filepath.Join(env.dir, fmt.Sprintf("pssh-hosts-%d", rtt.Milliseconds()))
	if err := os.WriteFile(hostsFile, []byte(strings.Join(addrs, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	args := psshArgs(env, hostsFile)

	// Side B: the watcher's executor, in this process.
	set, err := loadPolicy(env.dir, fl, addrs, o, env.identity, env.knownHosts)
	if err != nil {
		return nil, err
	}
	sshCfg := set.Policies[0].Rollback.SSH
	var coldPool *rollback.SSHPool
	cold := &rollback.Executor{Policies: func() *policy.Set { return set }, Audit: env.rec,
		Dial: func(ctx context.Context, host string, cfg policy.SSH) (rollback.Target, error) {
			return coldPool.Dial(ctx, host, cfg)
		}}
	warmPool := rollback.NewSSHPool(o.maxOpen)
	defer warmPool.Close()
	warm := &rollback.Executor{Policies: func() *policy.Set { return set }, Audit: env.rec, Dial: warmPool.Dial}

	ph := &phase{rtt: rtt}
	want := map[string]bool{}
	for _, w := range strings.Split(o.sides, ",") {
		want[strings.TrimSpace(w)] = true
	}
	if want["warm"] {
		// What the warm connections hold, measured as they open.
		if ph.mem, err = measureMemory(ctx, warmPool, addrs, sshCfg, fl, srv); err != nil {
			return nil, err
		}
	}
	ph.sides = []*side{
		{
			key: "pssh", name: "parallel-ssh -p " + strconv.Itoa(o.hosts), runs: o.psshRuns,
			cpuWhat: "parallel-ssh and its ssh clients (rusage of the reaped child)",
			measure: func(ctx context.Context, i int) (sample, error) {
				return measurePSSH(ctx, env, args, px)
			},
		},
		{
			key: "cold", name: "watcher, cold", runs: o.runs,
			cpuWhat: "this process (getrusage RUSAGE_SELF delta)",
			measure: func(ctx context.Context, i int) (sample, error) {
				coldPool = rollback.NewSSHPool(o.maxOpen)
				return measureWatcher(ctx, env, "cold", cold, i, px, func() *rollback.SSHPool { return coldPool }, nil, func() { coldPool.Close() })
			},
		},
		{
			key: "warm", name: "watcher, warm", runs: o.runs,
			cpuWhat: "this process (getrusage RUSAGE_SELF delta)",
			measure: func(ctx context.Context, i int) (sample, error) {
				return measureWatcher(ctx, env, "warm", warm, i, px, func() *rollback.SSHPool { return warmPool }, func() error {
					return dialAll(ctx, warmPool, addrs, sshCfg, fl)
				}, nil)
			},
		},
	}
	ph.sides = slices.DeleteFunc(ph.sides, func(s *side) bool { return !want[s.key] })
	if len(ph.sides) == 0 {
		return nil, errNoSides
	}

	// One round that is not counted: page cache, Go runtime, sshd binaries.
	fmt.Println("warm-up round (not counted)")
	for _, s := range ph.sides {
		smp, err := s.measure(ctx, -1)
		if err != nil {
			return nil, fmt.Errorf("%s (warm-up): %w", s.name, err)
		}
		printRun(s.name, -1, smp)
	}
	rounds := 0
	for _, s := range ph.sides {
		rounds = max(rounds, s.runs)
	}
	// Interleaved, so that a change in the machine's load hits every side.
	for i := range rounds {
		for _, s := range ph.sides {
			if i >= s.runs {
				continue
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			smp, err := s.measure(ctx, i)
			if err != nil {
				return nil, fmt.Errorf("%s, run %d: %w", s.name, i+1, err)
			}
			s.samples = append(s.samples, smp)
			printRun(s.name, i, smp)
		}
	}
	return ph, nil
}

func printRun(name string, i int, s sample) {
	run := "warm-up"
	if i >= 0 {
		run = fmt.Sprintf("run %d", i+1)
	}
	trips := ""
	if len(s.flights) > 0 {
		lo, hi := slices.Min(s.flights), slices.Max(s.flights)
		trips = fmt.Sprintf("   round trips per host %d", lo)
		if hi != lo {
			trips += fmt.Sprintf("..%d", hi)
		}
	}
	fmt.Printf("  %-22s %-8s wall %9s   client CPU %9s   sshd CPU %9s%s\n", name, run, ms(s.wall), ms(s.cpu), ms(s.sshd), trips)
}

// shellRollback is the seed's rollback (the Phing target's ssh.command)
// made atomic: the new link is made under a temporary name and renamed over
// the old one (mv -T is rename(2)) instead of rm -fR then ln -s. Every host
// runs the same command, as with parallel-ssh on a real fleet; here the
// hosts share one filesystem, so each finds its own directory by the
// address it was reached at ($SSH_CONNECTION's third word), with shell
// builtins only.
func shellRollback(root string) string {
	return `set -- $SSH_CONNECTION && cd ` + shellQuote(root) + `/"$3" &&` +
		` PREVIOUS_VERSION=$(cat current/previousVersion) &&` +
		` echo "PREVIOUS_VERSION is $PREVIOUS_VERSION" &&` +
		` if [ ! -d "$PREVIOUS_VERSION" ]; then echo "FAILURE PREVIOUS_VERSION $PREVIOUS_VERSION does not exist, we can not rollback"; exit 255; fi &&` +
		` ln -s "$PREVIOUS_VERSION" current.tmp && mv -T current.tmp current &&` +
		` ACTUAL_VERSION=$(readlink current) &&` +
		` if [ "$ACTUAL_VERSION" != "$PREVIOUS_VERSION" ]; then echo "FAILURE link is $ACTUAL_VERSION"; exit 1; fi &&` +
		` echo "OK link ok actual: $ACTUAL_VERSION"`
}

// measurePSSH times one parallel-ssh run, counting the round trips of
// every host when px is not nil.
func measurePSSH(ctx context.Context, env *phaseEnv, args []string, px *proxies) (sample, error) {
	fl, srv := env.fl, env.srv
	if err := fl.reset(); err != nil {
		return sample{}, err
	}
	time.Sleep(env.o.quiet)
	sshd0, base, err := srv.treeCPU()
	if err != nil {
		return sample{}, err
	}
	if px != nil {
		if err := px.reset(); err != nil {
			return sample{}, err
		}
	}
	cmd := exec.CommandContext(ctx, env.pssh, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// parallel-ssh kills its ssh processes on SIGINT.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 3 * time.Second
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return sample{}, fmt.Errorf("%w:\n%s", err, tail(out.String(), 40))
	}
	st := cmd.ProcessState
	smp := sample{wall: wall, cpu: st.UserTime() + st.SystemTime()}
	if px != nil {
		if smp.flights, err = px.flights(); err != nil {
			return sample{}, err
		}
	}
	sshd1, err := srv.settle(base)
	if err != nil {
		return sample{}, err
	}
	smp.sshd = sshd1 - sshd0
	if n := strings.Count(out.String(), "[SUCCESS]"); n != len(fl.ips) {
		return sample{}, fmt.Errorf("%d of %d hosts reported SUCCESS:\n%s", n, len(fl.ips), tail(out.String(), 40))
	}
	if n := strings.Count(out.String(), "OK link ok actual: "); n != len(fl.ips) {
		return sample{}, fmt.Errorf("%d of %d hosts printed OK:\n%s", n, len(fl.ips), tail(out.String(), 40))
	}
	return smp, fl.verify(false)
}

// measureWatcher times one Execute: from the request to every host switched,
// read back and marked, and the rollback.completed record written. prepare
// runs before the timer (the warm side opens its connections there), after
// runs after it (the cold side closes its pool there); pool is the pool
// whose SFTP requests are counted.
func measureWatcher(ctx context.Context, env *phaseEnv, label string, e *rollback.Executor, i int, px *proxies, pool func() *rollback.SSHPool, prepare func() error, after func()) (sample, error) {
	fl, srv, rec := env.fl, env.srv, env.rec
	if err := fl.reset(); err != nil {
		return sample{}, err
	}
	rec.reset()
	time.Sleep(env.o.quiet)
	if prepare != nil {
		if err := prepare(); err != nil {
			return sample{}, err
		}
	}
	sshd0, base, err := srv.treeCPU()
	if err != nil {
		return sample{}, err
	}
	req := events.RollbackRequest{
		ID: fmt.Sprintf("bench-%s-%d-%d", label, i+1, time.Now().UnixNano()), Service: "shop", Environment: "production",
		Version: "v2", Reason: "fleet benchmark", Source: events.SourceValidation,
		RunID: "bench-run", DeployID: "bench-deploy", Time: time.Now().UTC(),
	}
	if px != nil {
		if err := px.reset(); err != nil {
			return sample{}, err
		}
	}
	requests := pool().SFTPRequests()
	runtime.GC() // garbage of the set-up is not the rollback's
	var ru0, ru1 syscall.Rusage
	var res rollback.Result
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	pprof.Do(ctx, pprof.Labels("section", label), func(ctx context.Context) {
		res = e.Execute(ctx, req)
	})
	wall := time.Since(start)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	smp := sample{wall: wall, cpu: cpuOf(ru1) - cpuOf(ru0), requests: pool().SFTPRequests() - requests}
	if px != nil {
		if smp.flights, err = px.flights(); err != nil {
			return sample{}, err
		}
	}
	if after != nil {
		after()
	}
	sshd1, err := srv.settle(base)
	if err != nil {
		return sample{}, err
	}
	smp.sshd = sshd1 - sshd0
	if res.Status != rollback.ResultCompleted {
		return sample{}, fmt.Errorf("status %s: %v", res.Status, res.Err)
	}
	if n := rec.count(audit.RollbackHost); n != len(fl.ips) {
		return sample{}, fmt.Errorf("%d rollback.host records, want %d", n, len(fl.ips))
	}
	return smp, fl.verify(true)
}

// dialAll opens (or checks) the pool's connection to every host and reads
// each host's link over it, before the timer starts.
func dialAll(ctx context.Context, pool *rollback.SSHPool, addrs []string, cfg policy.SSH, fl fleet) error {
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	// A few at a time, as the watcher's Warmer opens them: hundreds of
	// handshakes at once on this machine's cores would not finish within
	// the connect timeout.
	sem := make(chan struct{}, 32)
	for i, a := range addrs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			t, err := pool.Dial(ctx, a, cfg)
			if err == nil {
				_, err = t.Readlink(fl.link(fl.ips[i]))
			}
			errs[i] = err
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func cpuOf(ru syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadPolicy(dir string, fl fleet, addrs []string, o options, identity, knownHosts string) (*policy.Set, error) {
	q := make([]string, len(addrs))
	for i, a := range addrs {
		q[i] = strconv.Quote(a)
	}
	base := fl.root
	rules := fmt.Sprintf(`policies:
  - name: fleet-bench
    match: {service: shop, environment: production}
    checks:
      - {name: up, query: up, min: 1}
    rollback:
      link: %q
      releases_dir: %q
      hosts: [%s]
      parallelism: %d
      ssh: {user: %q, identity_file: %q, known_hosts: %q, connect_timeout: %s, command_timeout: 60s}
`, base+"/{{ .Host }}/current", base+"/{{ .Host }}/releases", strings.Join(q, ", "), o.hosts, o.user, identity, knownHosts, model.Duration(o.connectTimeout))
	file := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(file, []byte(rules), 0o644); err != nil {
		return nil, err
	}
	set, err := policy.Load(file)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", file, err)
	}
	return set, nil
}

// recorder is the auditor: it keeps the records in memory. Not
// audit.Memory, whose JSON round trip per record would be timed with the
// rollback.
type recorder struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (r *recorder) Record(_ context.Context, rec audit.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = nil
}

func (r *recorder) count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Kind == kind {
			n++
		}
	}
	return n
}

// ensureUser creates the benchmark user if missing (home directory, shell
// /bin/sh) and sets its password field to "*": with UsePAM no, sshd refuses
// even a key login to an account whose password is locked ("!").
func ensureUser(name string) (uid, gid int, err error) {
	if _, err := user.Lookup(name); err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			return 0, 0, fmt.Errorf("looking up user %s: %w", name, err)
		}
		if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("useradd -m -s /bin/sh %s: %v: %s", name, err, out)
		}
		fmt.Fprintf(os.Stderr, "created user %s (shell /bin/sh)\n", name)
	}
	out, err := exec.Command("getent", "passwd", name).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("getent passwd %s: %w", name, err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), ":")
	if len(f) < 7 {
		return 0, 0, fmt.Errorf("getent passwd %s: unexpected %q", name, out)
	}
	// A shell with a heavy rc file would add its start-up to every pssh
	// session; the user is meant to be this benchmark's own.
	if f[6] != "/bin/sh" {
		return 0, 0, fmt.Errorf("user %s has shell %s, not /bin/sh: pick another -user, or usermod -s /bin/sh %s", name, f[6], name)
	}
	if out, err := exec.Command("usermod", "-p", "*", name).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("usermod -p '*' %s: %v: %s", name, err, out)
	}
	uid, _ = strconv.Atoi(f[2])
	gid, _ = strconv.Atoi(f[3])
	return uid, gid, nil
}

// ensurePSSH returns parallel-ssh's path, installing Debian's pssh first
// when it is missing.
func ensurePSSH() (string, error) {
	if p, err := exec.LookPath("parallel-ssh"); err == nil {
		return p, nil
	}
	fmt.Fprintln(os.Stderr, "parallel-ssh missing: apt-get install pssh")
	install := func() error {
		cmd := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends", "pssh")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	if err := install(); err != nil {
		update := exec.Command("apt-get", "update", "-qq")
		update.Stdout, update.Stderr = os.Stderr, os.Stderr
		if err := update.Run(); err != nil {
			return "", fmt.Errorf("apt-get update: %w", err)
		}
		if err := install(); err != nil {
			return "", fmt.Errorf("apt-get install pssh: %w", err)
		}
	}
	return exec.LookPath("parallel-ssh")
}
