// Command fleet measures a fleet rollback over SSH both ways, in one run: the
// shell procedure the watcher replaces (parallel-ssh running the seed's
// rollback, made atomic) and the watcher's executor (SFTP over a pool of
// connections, cold and warm), against the same 64 real OpenSSH "hosts" on
// this machine (127.0.0.2 ... 127.0.0.65, 16 per sshd process).
//
//	sudo go run ./bench/fleet [-hosts 64] [-runs 7] [-pssh-runs 5]
//
// It needs root: it creates the user the rollbacks log in as (rwbench,
// shell /bin/sh), installs pssh when missing and runs sshd. Everything else
// lives in a temporary directory removed on exit; the sshd processes and
// their connections are killed on exit, Ctrl-C included.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
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

	"golang.org/x/crypto/ssh"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
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
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	flag.IntVar(&o.hosts, "hosts", 64, "SSH hosts (127.0.0.2 upwards, 16 per sshd process); parallel-ssh -p and the policy's parallelism are the same number")
	flag.IntVar(&o.runs, "runs", 7, "measured runs of the watcher, cold and warm each")
	flag.IntVar(&o.psshRuns, "pssh-runs", 5, "measured runs of parallel-ssh")
	flag.StringVar(&o.user, "user", "rwbench", "user the rollbacks log in as (created with shell /bin/sh if missing)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file; the watcher's timed sections carry the label section=warm or section=cold (go tool pprof -tagfocus section=warm ...)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (sshd logs, fleet) for inspection")
	flag.DurationVar(&o.quiet, "quiet", 500*time.Millisecond, "pause before every timed run, after the reset, so that the previous run's teardown (64 sshd connections exiting) is over")
	flag.StringVar(&o.sides, "sides", "pssh,cold,warm", "the sides to measure, for profiling one of them; the ratios need all three")
	flag.Parse()
	if o.hosts < 1 || o.hosts > 253 || o.runs < 1 || o.psshRuns < 1 {
		fmt.Fprintln(os.Stderr, "fleet: -hosts must be 1..253, -runs and -pssh-runs at least 1")
		return 2
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

// sample is one measured run.
type sample struct {
	wall time.Duration
	cpu  time.Duration // the client side: user+sys
	sshd time.Duration // the server side: the sshd process trees
}

type side struct {
	key     string // for -sides
	name    string
	cpuWhat string
	runs    int
	samples []sample
	measure func(ctx context.Context, i int) (sample, error)
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

	ips := make([]string, o.hosts)
	for i := range ips {
		ips[i] = fmt.Sprintf("127.0.0.%d", i+2)
	}
	srv, err := startServers(dir, ips, authorized)
	defer srv.stop()
	if err != nil {
		return err
	}
	knownHosts := filepath.Join(dir, "known_hosts")
	if err := srv.knownHosts(knownHosts); err != nil {
		return err
	}
	fl := fleet{root: dir, ips: ips, uid: uid, gid: gid}
	if err := fl.create(); err != nil {
		return fmt.Errorf("creating the fleet: %w", err)
	}

	// Side A: parallel-ssh running the seed's rollback, made atomic.
	hostsFile := filepath.Join(dir, "pssh-hosts")
	if err := os.WriteFile(hostsFile, []byte(strings.Join(srv.addrs, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	psshArgs := []string{
		"-p", strconv.Itoa(o.hosts), "-t", "120", "-i", "-h", hostsFile, "-l", o.user,
		"-x", "-F /dev/null -i " + identity,
		"-O", "UserKnownHostsFile=" + knownHosts, "-O", "GlobalKnownHostsFile=/dev/null",
		"-O", "StrictHostKeyChecking=yes", "-O", "BatchMode=yes", "-O", "IdentitiesOnly=yes",
		shellRollback(dir),
	}

	// Side B: the watcher's executor, in this process.
	set, err := loadPolicy(dir, fl, srv.addrs, o, identity, knownHosts)
	if err != nil {
		return err
	}
	sshCfg := set.Policies[0].Rollback.SSH
	rec := &recorder{}
	var coldPool *rollback.SSHPool
	cold := &rollback.Executor{Policies: func() *policy.Set { return set }, Audit: rec,
		Dial: func(ctx context.Context, host string, cfg policy.SSH) (rollback.Target, error) {
			return coldPool.Dial(ctx, host, cfg)
		}}
	warmPool := rollback.NewSSHPool(0)
	defer warmPool.Close()
	warm := &rollback.Executor{Policies: func() *policy.Set { return set }, Audit: rec, Dial: warmPool.Dial}

	sides := []*side{
		{
			key: "pssh", name: "parallel-ssh -p " + strconv.Itoa(o.hosts), runs: o.psshRuns,
			cpuWhat: "parallel-ssh and its ssh clients (rusage of the reaped child)",
			measure: func(ctx context.Context, i int) (sample, error) {
				return measurePSSH(ctx, pssh, psshArgs, fl, srv, o.quiet)
			},
		},
		{
			key: "cold", name: "watcher, cold", runs: o.runs,
			cpuWhat: "this process (getrusage RUSAGE_SELF delta)",
			measure: func(ctx context.Context, i int) (sample, error) {
				coldPool = rollback.NewSSHPool(0)
				return measureWatcher(ctx, "cold", cold, rec, fl, srv, i, o.quiet, nil, func() { coldPool.Close() })
			},
		},
		{
			key: "warm", name: "watcher, warm", runs: o.runs,
			cpuWhat: "this process (getrusage RUSAGE_SELF delta)",
			measure: func(ctx context.Context, i int) (sample, error) {
				return measureWatcher(ctx, "warm", warm, rec, fl, srv, i, o.quiet, func() error {
					return dialAll(ctx, warmPool, srv.addrs, sshCfg, fl)
				}, nil)
			},
		},
	}

	want := map[string]bool{}
	for _, w := range strings.Split(o.sides, ",") {
		want[strings.TrimSpace(w)] = true
	}
	sides = slices.DeleteFunc(sides, func(s *side) bool { return !want[s.key] })
	if len(sides) == 0 {
		return fmt.Errorf("-sides %q: none of pssh, cold, warm", o.sides)
	}

	fmt.Printf("fleet rollback benchmark, %s\n", time.Now().Format("2006-01-02 15:04 MST"))
	fmt.Printf("machine: %s\n", machine())
	fmt.Printf("software: %s; %s; %s\n", commandVersion("ssh", "-V"), commandVersion(pssh, "--version"), runtime.Version())
	fmt.Printf("load average at start: %s\n", loadavg())
	steal0 := cpuTimes()
	fmt.Printf("fleet: %d hosts %s ... %s, %d sshd processes on port %d, user %s (/bin/sh), one fresh host key and client key\n",
		o.hosts, srv.addrs[0], srv.addrs[len(srv.addrs)-1], len(srv.cmds), srv.port, o.user)
	fmt.Printf("side A: %s %s\n", pssh, shellJoin(psshArgs))
	fmt.Printf("side B: rollback.Executor.Execute, SSHPool dialer, policy %s (parallelism %d), recording auditor, no NATS\n",
		filepath.Join(dir, "rules.yml"), o.hosts)
	fmt.Printf("each run: fleet reset (every link back on v2, markers removed, previousVersion restored, sync) and a %s pause, untimed;"+
		" the watcher's runs also start after a runtime.GC(), the warm ones after every host's connection was dialed or checked and its link read;"+
		" sides interleaved, one untimed warm-up round first\n", o.quiet)
	fmt.Println()

	// One round that is not counted: page cache, Go runtime, sshd binaries.
	fmt.Println("warm-up round (not counted)")
	for _, s := range sides {
		smp, err := s.measure(ctx, -1)
		if err != nil {
			return fmt.Errorf("%s (warm-up): %w", s.name, err)
		}
		printRun(s.name, -1, smp)
	}
	rounds := 0
	for _, s := range sides {
		rounds = max(rounds, s.runs)
	}
	// Interleaved, so that a change in the machine's load hits every side.
	for i := range rounds {
		for _, s := range sides {
			if i >= s.runs {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			smp, err := s.measure(ctx, i)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", s.name, i+1, err)
			}
			s.samples = append(s.samples, smp)
			printRun(s.name, i, smp)
		}
	}
	fmt.Println()
	report(sides)

	// Where a warm rollback's round trips go: one more Execute, not timed,
	// through targets that count the executor's calls.
	var calls callCounter
	counting := &rollback.Executor{Policies: warm.Policies, Audit: rec, Dial: calls.dial(warmPool.Dial)}
	if _, err := measureWatcher(ctx, "count", counting, rec, fl, srv, 0, 0, func() error {
		return dialAll(ctx, warmPool, srv.addrs, sshCfg, fl)
	}, nil); err != nil {
		return fmt.Errorf("counting calls: %w", err)
	}
	fmt.Printf("\nwatcher's Target calls in one rollback (counted in an extra, untimed run): %s\n", calls.summary(o.hosts))
	fmt.Printf("load average at end: %s", loadavg())
	if steal1 := cpuTimes(); steal1.total > steal0.total {
		fmt.Printf("; CPU time stolen by the hypervisor during the benchmark: %.1f%%", 100*float64(steal1.steal-steal0.steal)/float64(steal1.total-steal0.total))
	}
	fmt.Println()
	return nil
}

func printRun(name string, i int, s sample) {
	run := "warm-up"
	if i >= 0 {
		run = fmt.Sprintf("run %d", i+1)
	}
	fmt.Printf("  %-22s %-8s wall %9s   client CPU %9s   sshd CPU %9s\n", name, run, ms(s.wall), ms(s.cpu), ms(s.sshd))
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

func measurePSSH(ctx context.Context, pssh string, args []string, fl fleet, srv *servers, quiet time.Duration) (sample, error) {
	if err := fl.reset(); err != nil {
		return sample{}, err
	}
	time.Sleep(quiet)
	sshd0, base, err := srv.treeCPU()
	if err != nil {
		return sample{}, err
	}
	cmd := exec.CommandContext(ctx, pssh, args...)
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
// runs after it (the cold side closes its pool there).
func measureWatcher(ctx context.Context, label string, e *rollback.Executor, rec *recorder, fl fleet, srv *servers, i int, quiet time.Duration, prepare func() error, after func()) (sample, error) {
	if err := fl.reset(); err != nil {
		return sample{}, err
	}
	rec.reset()
	time.Sleep(quiet)
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
	if after != nil {
		after()
	}
	smp := sample{wall: wall, cpu: cpuOf(ru1) - cpuOf(ru0)}
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
	for i, a := range addrs {
		wg.Go(func() {
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
      ssh: {user: %q, identity_file: %q, known_hosts: %q, connect_timeout: 10s, command_timeout: 30s}
`, base+"/{{ .Host }}/current", base+"/{{ .Host }}/releases", strings.Join(q, ", "), o.hosts, o.user, identity, knownHosts)
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

func report(sides []*side) {
	fmt.Printf("%-22s %4s  %11s  %23s  %11s  %11s  %11s\n", "", "runs", "wall median", "(min ... max)", "client CPU", "sshd CPU", "total CPU")
	med := map[string]sample{}
	for _, s := range sides {
		if len(s.samples) == 0 {
			continue
		}
		walls := pick(s.samples, func(x sample) time.Duration { return x.wall })
		m := sample{wall: median(walls), cpu: median(pick(s.samples, func(x sample) time.Duration { return x.cpu })),
			sshd: median(pick(s.samples, func(x sample) time.Duration { return x.sshd }))}
		med[s.key] = m
		total := median(pick(s.samples, func(x sample) time.Duration { return x.cpu + x.sshd }))
		fmt.Printf("%-22s %4d  %11s  %23s  %11s  %11s  %11s\n", s.name, len(s.samples), ms(m.wall),
			"("+ms(slices.Min(walls))+" ... "+ms(slices.Max(walls))+")", ms(m.cpu), ms(m.sshd), ms(total))
	}
	fmt.Println("(medians of the runs; CPU is user+sys.")
	for _, s := range sides {
		fmt.Printf(" client CPU of %s: %s.\n", s.name, s.cpuWhat)
	}
	fmt.Println(" sshd CPU: the sshd listeners and every process below them (connection processes, shells, the commands they ran), from /proc, reaped children included.)")
	fmt.Println()
	p, ok := med["pssh"]
	if !ok {
		return
	}
	for _, g := range []struct {
		key, name string
		goal      float64
	}{{"warm", "watcher, warm", 50}, {"cold", "watcher, cold", 5}} {
		w, ok := med[g.key]
		if !ok {
			continue
		}
		r := float64(p.wall) / float64(w.wall)
		verdict := "met"
		if r < g.goal {
			verdict = "NOT met"
		}
		fmt.Printf("parallel-ssh / %s: wall %.1fx (goal >= %gx: %s); client CPU %.1fx; client+sshd CPU %.1fx\n",
			g.name, r, g.goal, verdict, float64(p.cpu)/float64(w.cpu), float64(p.cpu+p.sshd)/float64(w.cpu+w.sshd))
	}
}

func pick(s []sample, f func(sample) time.Duration) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, x := range s {
		out[i] = f(x)
	}
	return out
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	var u syscall.Utsname
	kernel := ""
	if syscall.Uname(&u) == nil {
		kernel = "Linux " + utsString(u.Release[:])
	}
	return fmt.Sprintf("%d cores (%s), %s", runtime.NumCPU(), model, kernel)
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

type cpuStat struct{ steal, total int64 }

// cpuTimes reads the machine's CPU time counters (/proc/stat, first line):
// the steal column is time the hypervisor gave to other guests.
func cpuTimes() cpuStat {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var st cpuStat
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i < 8 { // user nice system idle iowait irq softirq steal; guest time is already in user
			st.total += n
		}
		if i == 7 {
			st.steal = n
		}
	}
	return st
}

func commandVersion(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// shellQuote quotes s as one word for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellJoin shows argv as a command line one could paste.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:@", r))
		}) < 0 {
			q[i] = a
		} else {
			q[i] = shellQuote(a)
		}
	}
	return strings.Join(q, " ")
}
