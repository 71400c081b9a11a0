// Package sshkit holds what the tests and the fleet benchmark need to run
// real sshd processes on loopback addresses: keys, a free port on several
// addresses, a wait for the SSH banner, and the processes below an sshd.
package sshkit

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// WriteKey writes a new unencrypted ed25519 private key to path (0600:
// sshd refuses a host key others can read; OpenSSH format, which both sshd
// and the OpenSSH client read) and returns its public key.
func WriteKey(path, comment string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

// Banner connects to addr and reads the SSH identification line: sshd is
// up there.
func Banner(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "SSH-2.0-") {
		return fmt.Errorf("not an SSH banner: %q", line)
	}
	return nil
}

// FreePort finds a port free on every address (tried a few times: another
// process may hold it on one of them).
func FreePort(addrs []string) (int, error) {
	var last error
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(addrs[0], "0"))
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ok := true
		for _, a := range addrs[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				last, ok = err, false
				break
			}
			l.Close()
		}
		ln.Close()
		if ok {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no port free on all %d addresses: %w", len(addrs), last)
}

// Parents maps each process to its parent, from /proc/PID/stat.
func Parents() (map[int]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	parent := map[int]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		rest := string(b)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			parent[p] = ppid
		}
	}
	return parent, nil
}

// Descendants lists the processes below pid.
func Descendants(pid int) []int {
	parent, err := Parents()
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for p, pp := range parent {
		children[pp] = append(children[pp], p)
	}
	var out []int
	todo := []int{pid}
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		for _, c := range children[p] {
			out = append(out, c)
			todo = append(todo, c)
		}
	}
	return out
}

// Config is an sshd configuration for a server on loopback addresses:
// public keys only, no PAM (so accounts need no password, see
// SSH-TEST-NOTES), internal-sftp, and limits raised for many parallel
// connections.
type Config struct {
	Listen         []string // addresses, all on Port
	Port           int
	HostKey        string
	PidFile        string
	AuthorizedKeys string
	RootLogin      bool   // PermitRootLogin prohibit-password, else no
	LogLevel       string // VERBOSE for tests that read the log; ERROR for benchmarks
	// NoPenalties turns off OpenSSH 9.8+ PerSourcePenalties, for tests
	// that fail logins on purpose.
	NoPenalties bool
}

// String is the sshd_config text.
func (c Config) String() string {
	var b strings.Builder
	for _, a := range c.Listen {
		fmt.Fprintf(&b, "ListenAddress %s\n", net.JoinHostPort(a, strconv.Itoa(c.Port)))
	}
	root := "no"
	if c.RootLogin {
		root = "prohibit-password"
	}
	level := c.LogLevel
	if level == "" {
		level = "ERROR"
	}
	fmt.Fprintf(&b, `HostKey %s
PidFile %s
AuthorizedKeysFile %s
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin %s
Subsystem sftp internal-sftp
MaxStartups 1000
MaxSessions 1000
MaxAuthTries 20
LoginGraceTime 30
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
LogLevel %s
`, c.HostKey, c.PidFile, c.AuthorizedKeys, root, level)
	if c.NoPenalties {
		b.WriteString("PerSourcePenalties no\n")
	}
	return b.String()
}
