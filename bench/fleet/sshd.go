package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rollback-watcher/watcher/internal/sshkit"
)

// sshdPath is Debian's sshd. It re-executes itself for every connection,
// so it must be started by absolute path.
const sshdPath = "/usr/sbin/sshd"

// maxListenSocks is OpenSSH's MAX_LISTEN_SOCKS: one sshd listens on at most
// 16 addresses, so a fleet of 64 "hosts" needs 4 sshd processes.
const maxListenSocks = 16

// servers are the sshd processes serving the fleet: one port, every host
// address a ListenAddress of one of them.
type servers struct {
	dir   string
	port  int
	addrs []string // "127.0.0.2:PORT", in host order
	cmds  []*exec.Cmd
	done  []chan struct{}
	// hostKey is shared by every host, with a known_hosts line per address.
	hostKey ssh.PublicKey
	// orphans is the CPU time of the processes that left the sshd trees
	// (see adoptOrphans) and that this process reaped.
	orphans time.Duration
	// ignored is a child of this process that is not an orphan of the sshd
	// trees: the proxies (0: none).
	ignored int
}

// ignore makes adopted leave out pid, a child this process started (0:
// none).
func (s *servers) ignore(pid int) { s.ignored = pid }

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER for prctl(2).
const prSetChildSubreaper = 36

// adoptOrphans makes this process the reaper of its orphaned descendants.
// When a connection ends, sshd's session process may exit before the SFTP
// server it forked (internal-sftp); without a subreaper that child is
// handed to PID 1, out of the sshd tree, and the CPU time it used would not
// be counted. As a subreaper, this process adopts it instead, counts it
// while it lives and reaps it (reapOrphans), adding what wait4 reports.
func adoptOrphans() error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", e)
	}
	return nil
}

// adopted are the children of this process that it did not start: orphans
// from the sshd trees. (Every process this benchmark starts itself has
// been waited for whenever the sshd CPU time is read, except the sshd
// listeners.)
func (s *servers) adopted(procs map[int]procStat) []int {
	me := os.Getpid()
	listeners := s.pids()
	var out []int
	for pid, st := range procs {
		if st.ppid == me && pid != s.ignored && !slices.Contains(listeners, pid) {
			out = append(out, pid)
		}
	}
	return out
}

// reapOrphans waits for the adopted orphans that have exited and adds the
// CPU time they and their own children used to s.orphans.
func (s *servers) reapOrphans(procs map[int]procStat) {
	for _, pid := range s.adopted(procs) {
		if !procs[pid].zombie {
			continue
		}
		var ws syscall.WaitStatus
		var ru syscall.Rusage
		if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, &ru); err == nil && got == pid {
			s.orphans += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
}

// startServers starts ceil(len(ips)/16) sshd processes in dir, all on one
// free port, letting the keys in authorized log in. It returns once every
// address answers with an SSH banner. Stop must be called even on error.
func startServers(dir string, ips []string, authorized string) (*servers, error) {
	s := &servers{dir: dir}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return s, fmt.Errorf("creating /run/sshd (sshd's privilege separation directory): %w", err)
	}
	var err error
	if s.hostKey, err = sshkit.WriteKey(filepath.Join(dir, "ssh_host_ed25519_key"), "rollback-watcher fleet benchmark"); err != nil {
		return s, fmt.Errorf("host key: %w", err)
	}
	if s.port, err = sshkit.FreePort(ips); err != nil {
		return s, err
	}
	for i := 0; i < len(ips); i += maxListenSocks {
		chunk := ips[i:min(i+maxListenSocks, len(ips))]
		if err := s.start(len(s.cmds), chunk, authorized); err != nil {
			return s, err
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, a := range s.addrs {
		for {
			err := sshkit.Banner(a)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return s, fmt.Errorf("%s does not answer after 15s (%v); sshd logs in %s", a, err, dir)
			}
			for i, d := range s.done {
				select {
				case <-d:
					log, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("sshd-%d.log", i)))
					return s, fmt.Errorf("sshd %d exited: %s", i, log)
				default:
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return s, nil
}

// config is the sshd_config of the nth sshd. LogLevel ERROR: a log line
// per connection would be disk work that both sides pay alike and that
// measures neither.
func (s *servers) config(ips []string, n int, authorized string) string {
	return sshkit.Config{
		Listen: ips, Port: s.port, AuthorizedKeys: authorized, LogLevel: "ERROR",
		HostKey: filepath.Join(s.dir, "ssh_host_ed25519_key"),
		PidFile: filepath.Join(s.dir, fmt.Sprintf("sshd-%d.pid", n)),
	}.String()
}

func (s *servers) start(n int, ips []string, authorized string) error {
	cfgPath := filepath.Join(s.dir, fmt.Sprintf("sshd-%d.conf", n))
	if err := os.WriteFile(cfgPath, []byte(s.config(ips, n, authorized)), 0o600); err != nil {
		return err
	}
	if out, err := exec.Command(sshdPath, "-t", "-f", cfgPath).CombinedOutput(); err != nil {
		return fmt.Errorf("%s -t -f %s: %v: %s", sshdPath, cfgPath, err, out)
	}
	logf, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("sshd-%d.log", n)))
	if err != nil {
		return err
	}
	defer logf.Close() // sshd has its own copy
	cmd := exec.Command(sshdPath, "-D", "-e", "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A group of its own: a Ctrl-C at the terminal reaches the benchmark,
	// which then kills sshd and its connections (found by parentage, which
	// needs the listener alive), rather than sshd dying first and orphaning
	// them. Pdeathsig covers a benchmark killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", sshdPath, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmds = append(s.cmds, cmd)
	s.done = append(s.done, done)
	for _, ip := range ips {
		s.addrs = append(s.addrs, net.JoinHostPort(ip, strconv.Itoa(s.port)))
	}
	return nil
}

// pids are the listening sshd processes.
func (s *servers) pids() []int {
	var out []int
	for _, c := range s.cmds {
		if c.Process != nil {
			out = append(out, c.Process.Pid)
		}
	}
	return out
}

// stop kills every sshd and every connection process below it.
func (s *servers) stop() {
	for i, c := range s.cmds {
		if c.Process == nil {
			continue
		}
		kids := descendants(c.Process.Pid)
		_ = c.Process.Kill()
		for _, pid := range kids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-s.done[i]:
		case <-time.After(5 * time.Second):
		}
	}
	// Reap the orphans adopted on the way out rather than leave them to
	// PID 1 when this process exits.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		procs, err := readProcs()
		if err != nil || len(s.adopted(procs)) == 0 {
			return
		}
		s.reapOrphans(procs)
		time.Sleep(10 * time.Millisecond)
	}
}

// knownHosts writes a known_hosts file with a "[127.0.0.2]:PORT" line for
// every address, and one for the address on proxyPort when not 0 (the
// proxies pass the host key through).
func (s *servers) knownHosts(path string, proxyPort int) error {
	var b bytes.Buffer
	for _, a := range s.addrs {
		fmt.Fprintln(&b, knownhosts.Line([]string{a}, s.hostKey))
		if proxyPort != 0 {
			host, _, _ := net.SplitHostPort(a)
			fmt.Fprintln(&b, knownhosts.Line([]string{net.JoinHostPort(host, strconv.Itoa(proxyPort))}, s.hostKey))
		}
	}
	return os.WriteFile(path, b.Bytes(), 0o600)
}

// procStat is what /proc/PID/stat says of one process.
type procStat struct {
	ppid   int
	zombie bool
	// reaped is the CPU time (user+sys) of its children that exited and
	// were waited for (cutime + cstime, in clock ticks): the kernel sums
	// them in nanoseconds and rounds the sum, not each child.
	reaped int64
}

// readProcs reads every process's parent and reaped children's CPU time.
func readProcs() (map[int]procStat, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := make(map[int]procStat, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ... utime(14) stime(15) cutime(16) cstime(17):
		// comm may hold spaces and parentheses.
		rest := string(b)
		i := strings.LastIndexByte(rest, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(rest[i+1:])
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cu, _ := strconv.ParseInt(f[13], 10, 64)
		cs, _ := strconv.ParseInt(f[14], 10, 64)
		out[pid] = procStat{ppid: ppid, zombie: f[0] == "Z", reaped: cu + cs}
	}
	return out, nil
}

// ownCPU is the CPU time (user+sys) a live process used itself, to the
// nanosecond: the sum of its threads' sum_exec_runtime (/proc/PID/task/TID/
// schedstat). The utime and stime of /proc/PID/stat are whole clock ticks
// (10 ms), too coarse for 64 connection processes that each use a few ms.
func ownCPU(pid int) time.Duration {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var ns int64
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			ns += v
		}
	}
	return time.Duration(ns)
}

// treeOf lists roots and every process below them.
func treeOf(procs map[int]procStat, roots []int) []int {
	children := map[int][]int{}
	for pid, st := range procs {
		children[st.ppid] = append(children[st.ppid], pid)
	}
	var out []int
	todo := append([]int(nil), roots...)
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		out = append(out, p)
		todo = append(todo, children[p]...)
	}
	return out
}

func descendants(pid int) []int {
	procs, err := readProcs()
	if err != nil {
		return nil
	}
	return treeOf(procs, []int{pid})[1:]
}

// clockTicks is USER_HZ, the unit of cutime and cstime in /proc/PID/stat:
// 100 on Linux for every architecture Go supports.
const clockTicks = 100

// treeCPU is the CPU time of the sshd processes and everything below them
// (connection processes, shells and the commands they ran, orphans adopted
// by this process): what the live ones used (schedstat) plus what those
// that exited used (cutime and cstime of the process in the tree that
// reaped them, or wait4's rusage for the orphans reaped here); and how many
// processes the tree holds besides the listeners.
func (s *servers) treeCPU() (time.Duration, int, error) {
	procs, err := readProcs()
	if err != nil {
		return 0, 0, err
	}
	s.reapOrphans(procs)
	if procs, err = readProcs(); err != nil {
		return 0, 0, err
	}
	listeners := s.pids()
	roots := append(slices.Clone(listeners), s.adopted(procs)...)
	tree := treeOf(procs, roots)
	cpu := s.orphans
	for _, p := range tree {
		cpu += ownCPU(p) + time.Duration(procs[p].reaped)*time.Second/clockTicks
	}
	return cpu, len(tree) - len(listeners), nil
}

// settle waits until the sshd trees hold at most want processes besides the
// listeners (connections that ended have been torn down and reaped, so their
// CPU time is counted), then returns the tree's CPU time.
func (s *servers) settle(want int) (time.Duration, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		cpu, n, err := s.treeCPU()
		if err != nil {
			return 0, err
		}
		if n <= want {
			return cpu, nil
		}
		if time.Now().After(deadline) {
			return cpu, errors.New("sshd connection processes did not exit within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
