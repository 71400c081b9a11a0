package testutil

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rollback-watcher/watcher/internal/sshkit"
)

// SSHDPath is where Debian's openssh-server installs sshd. sshd re-executes
// itself for every connection, so it must be started by absolute path; and
// /usr/sbin is not on a normal user's PATH, so the file is what counts.
const SSHDPath = "/usr/sbin/sshd"

// maxListenSocks is OpenSSH's MAX_LISTEN_SOCKS: one sshd listens on at most
// 16 addresses.
const maxListenSocks = 16

// SSHD is a real OpenSSH server on loopback addresses, with its own host key,
// for integration tests: each address is a "host" of a fleet.
type SSHD struct {
	// Addrs are the listening addresses, "127.0.0.2:PORT", in the order asked.
	Addrs []string
	Port  int
	// KnownHosts is a known_hosts file with a "[127.0.0.2]:PORT" line for
	// every address.
	KnownHosts string
	// IdentityFile is an unencrypted ed25519 client key that may log in.
	IdentityFile string
	// User is who the tests log in as: the user running them.
	User string
	// HostKey is the server's public key, in authorized_keys format
	// ("ssh-ed25519 AAAA..."), for tests that write their own known_hosts.
	HostKey string
	// HostPublicKey is the same key, parsed.
	HostPublicKey ssh.PublicKey
	// Dir holds the configuration, the keys and the log.
	Dir string

	cmd     *exec.Cmd
	exited  chan error
	logPath string
	once    sync.Once
}

// SSHDBinary returns SSHDPath or fails the test saying what to install. It
// never skips: `make test` installs it (scripts/deps.sh).
func SSHDBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SSHD_BIN"); p != "" {
		return p
	}
	if _, err := os.Stat(SSHDPath); err != nil {
		t.Fatalf("%s is needed for the SSH tests: install the Debian package openssh-server (apt-get install openssh-server, or run `make deps`), or set SSHD_BIN to an absolute path: %v", SSHDPath, err)
	}
	return SSHDPath
}

// StartSSHD runs sshd in the foreground (-D -e) listening on hosts (IPv4
// loopback addresses such as "127.0.0.2"; every 127.x.y.z reaches the
// loopback interface without setup), all on one free port. With no hosts, it
// listens on 127.0.0.2. It returns once every address accepts connections
// and answers with an SSH banner; the test's cleanup stops it.
//
// The user running the tests must be able to log in with a key: with
// `UsePAM no`, an account whose password field is locked ("!") cannot, so
// set it to "*" (usermod -p '*' USER).
func StartSSHD(t testing.TB, hosts ...string) *SSHD {
	t.Helper()
	bin := SSHDBinary(t)
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.2"}
	}
	if len(hosts) > maxListenSocks {
		t.Fatalf("StartSSHD: %d addresses, but one sshd listens on at most %d: start several", len(hosts), maxListenSocks)
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
			t.Fatalf("StartSSHD: %q is not a loopback IP address", h)
		}
	}
	// The privilege separation directory; only root's sshd needs it.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil && os.Geteuid() == 0 {
		t.Fatalf("creating /run/sshd, which sshd needs: %v", err)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("current user: %v", err)
	}

	if locked(u.Username) {
		t.Fatalf("the account %s is locked (its /etc/shadow password starts with '!'), and sshd with UsePAM no refuses even key logins to it: run usermod -p '*' %s", u.Username, u.Username)
	}
	s := &SSHD{Dir: t.TempDir(), User: u.Username}
	hostKey := s.writeKey(t, "ssh_host_ed25519_key")
	s.HostPublicKey = hostKey
	s.HostKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKey)))
	s.IdentityFile = filepath.Join(s.Dir, "id_ed25519")
	clientKey := s.writeKey(t, "id_ed25519")
	authorized := filepath.Join(s.Dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientKey), 0o600); err != nil {
		t.Fatal(err)
	}

	// The port is free when chosen, but sshd binds it later: another
	// process may take it meanwhile, so a failed bind is worth a new port.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := sshkit.FreePort(hosts)
		if err != nil {
			lastErr = err
			continue
		}
		if lastErr = s.start(t, bin, hosts, port, authorized); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("sshd did not start: %v", lastErr)
	}
	t.Cleanup(s.Stop)

	var kh bytes.Buffer
	for _, a := range s.Addrs {
		fmt.Fprintln(&kh, knownhosts.Line([]string{a}, hostKey))
	}
	s.KnownHosts = filepath.Join(s.Dir, "known_hosts")
	if err := os.WriteFile(s.KnownHosts, kh.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// writeKey writes a new key to Dir/name (see sshkit.WriteKey).
func (s *SSHD) writeKey(t testing.TB, name string) ssh.PublicKey {
	t.Helper()
	k, err := sshkit.WriteKey(filepath.Join(s.Dir, name), "rollback-watcher test")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// config is the sshd_config; penalties turns off OpenSSH 9.8+
// PerSourcePenalties, since the tests refuse host keys on purpose.
func (s *SSHD) config(hosts []string, port int, authorized string, penalties bool) string {
	return sshkit.Config{
		Listen: hosts, Port: port, AuthorizedKeys: authorized, LogLevel: "VERBOSE",
		RootLogin: true, NoPenalties: penalties,
		HostKey: filepath.Join(s.Dir, "ssh_host_ed25519_key"),
		PidFile: filepath.Join(s.Dir, "sshd.pid"),
	}.String()
}

// start writes the configuration for port, starts sshd and waits for every
// address to answer.
func (s *SSHD) start(t testing.TB, bin string, hosts []string, port int, authorized string) error {
	t.Helper()
	cfgPath := filepath.Join(s.Dir, "sshd_config")
	cfg := s.config(hosts, port, authorized, true)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	if out, err := exec.Command(bin, "-t", "-f", cfgPath).CombinedOutput(); err != nil {
		if !strings.Contains(string(out), "PerSourcePenalties") {
			return fmt.Errorf("%s -t -f %s: %v: %s", bin, cfgPath, err, out)
		}
		cfg = s.config(hosts, port, authorized, false) // an OpenSSH before 9.8
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return err
		}
	}
	s.logPath = filepath.Join(s.Dir, "sshd.log")
	logf, err := os.Create(s.logPath)
	if err != nil {
		return err
	}
	defer logf.Close() // sshd has its own copy
	cmd := exec.Command(bin, "-D", "-e", "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.cmd = cmd
	s.Port = port
	s.Addrs = make([]string, len(hosts))
	for i, h := range hosts {
		s.Addrs[i] = net.JoinHostPort(h, strconv.Itoa(port))
	}
	s.once = sync.Once{}
	s.exited = exited

	deadline := time.Now().Add(10 * time.Second)
	for _, a := range s.Addrs {
		for {
			if strings.Contains(s.Log(), "Bind to port") || strings.Contains(s.Log(), "Cannot bind") {
				s.Stop()
				return fmt.Errorf("sshd could not listen on port %d: %s", port, s.Log())
			}
			if err := sshkit.Banner(a); err == nil {
				break
			} else if time.Now().After(deadline) {
				s.Stop()
				return fmt.Errorf("%s not answering after 10s (%v); sshd's log:\n%s", a, err, s.Log())
			}
			select {
			case err := <-exited:
				exited <- err
				return fmt.Errorf("sshd exited (%v); its log:\n%s", err, s.Log())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// Log returns what sshd wrote so far (LogLevel VERBOSE: connections, keys
// accepted, refusals).
func (s *SSHD) Log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// Stop kills sshd and every connection it serves, as a host going down
// would. Each connection is a process of its own (sshd re-executes itself
// and calls setsid), so they are found by parentage, before the listener
// dies and they are handed to init. Safe to call more than once.
func (s *SSHD) Stop() {
	s.once.Do(func() {
		if s.cmd == nil || s.cmd.Process == nil {
			return
		}
		kids := sshkit.Descendants(s.cmd.Process.Pid)
		_ = s.cmd.Process.Kill()
		for _, pid := range kids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		<-s.exited
	})
}

// locked reports whether name's password field in /etc/shadow starts with
// "!". Unreadable shadow (not root) says nothing: sshd will tell.
func locked(name string) bool {
	b, err := os.ReadFile("/etc/shadow")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) >= 2 && f[0] == name {
			return strings.HasPrefix(f[1], "!")
		}
	}
	return false
}
