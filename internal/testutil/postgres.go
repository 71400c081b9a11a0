package testutil

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Postgres is a PostgreSQL server the test started in a temporary
// directory, on a free loopback port, with trust authentication for the
// "postgres" role.
type Postgres struct {
	Host string
	Port int
	User string
	cmd  *exec.Cmd
}

// pgBin finds a PostgreSQL server binary: Debian keeps them under
// /usr/lib/postgresql/<major>/bin, off the PATH.
func pgBin(t testing.TB, name string) string {
	t.Helper()
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	sort.Strings(found)
	if len(found) > 0 {
		return found[len(found)-1]
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("PostgreSQL's %s is needed: install the Debian package postgresql (apt-get install postgresql, or run `make deps`)", name)
	return ""
}

// StartPostgres initialises and starts a throwaway cluster. PostgreSQL
// refuses to run as root, so as root the server runs as the "postgres"
// user, in a directory that user owns.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	initdb, server := pgBin(t, "initdb"), pgBin(t, "postgres")
	dir, err := os.MkdirTemp("", "watcher-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, PostgreSQL needs the postgres user (from the Debian package postgresql): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	run := func(name string, args ...string) *exec.Cmd {
		c := exec.Command(name, args...)
		c.Dir = dir
		if cred != nil {
			c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		return c
	}
	if out, err := run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	_, portStr, _ := net.SplitHostPort(FreeAddr(t))
	port, _ := strconv.Atoi(portStr)
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		_ = os.Chown(logf.Name(), int(cred.Uid), int(cred.Gid))
	}
	cmd := run(server, "-D", data, "-p", portStr, "-k", dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "full_page_writes=off")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting postgres: %v", err)
	}
	pg := &Postgres{Host: "127.0.0.1", Port: port, User: "postgres", cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	Eventually(t, 30*time.Second, "postgres accepting queries", func() bool {
		_, err := pg.Query("select 1")
		return err == nil
	})
	return pg
}

// PsqlArgs is the psql command line that reaches the server, for policies'
// data commands and for tests.
func (p *Postgres) PsqlArgs() []string {
	return []string{"psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", p.Host, "-p", strconv.Itoa(p.Port), "-U", p.User, "-d", "postgres"}
}

// Query runs sql with psql and returns its unaligned, tuples-only output.
func (p *Postgres) Query(sql string) (string, error) {
	args := append(p.PsqlArgs(), "-tA", "-c", sql)
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("psql %q: %v: %s", sql, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}
