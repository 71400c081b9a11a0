package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rollback-watcher/watcher/internal/sshkit"
)

// Latency mode: every host is reached through a delaying TCP proxy
// (sshkit.Proxy) listening on the host's address on a port of its own, so
// that both sides cross the same "network": each chunk arrives half a round
// trip after it was sent, and a connection waits one round trip before
// anything passes (its TCP handshake). The proxies also count the flights
// (round trips waited for) of every host.
//
// They run in a child process (this program started with -proxy-child):
// their CPU time is then neither the watcher's (getrusage RUSAGE_SELF) nor
// sshd's (the sshd trees).

const proxyChildArg = "-proxy-child"

// proxies is the parent's handle on the child.
type proxies struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	addrs []string // in host order
}

// startProxies starts the child with one proxy per backend, listening on
// the backend's IP and port.
func startProxies(rtt time.Duration, backends []string, port int) (*proxies, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, proxyChildArg)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the proxies: %w", err)
	}
	p := &proxies{cmd: cmd, in: in, out: bufio.NewReader(out)}
	fmt.Fprintln(in, int64(rtt))
	for _, b := range backends {
		host, _, _ := net.SplitHostPort(b)
		fmt.Fprintln(in, net.JoinHostPort(host, strconv.Itoa(port)), b)
	}
	fmt.Fprintln(in, "go")
	for range backends {
		line, err := p.out.ReadString('\n')
		if err != nil {
			p.stop()
			return nil, fmt.Errorf("the proxies did not start: %w", err)
		}
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
		if !ok {
			p.stop()
			return nil, fmt.Errorf("the proxies did not start: %s", line)
		}
		p.addrs = append(p.addrs, addr)
	}
	return p, nil
}

func (p *proxies) pid() int { return p.cmd.Process.Pid }

// ask sends a command and reads one answer line per proxy.
func (p *proxies) ask(cmd string) ([]string, error) {
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return nil, err
	}
	lines := make([]string, len(p.addrs))
	for i := range lines {
		l, err := p.out.ReadString('\n')
		if err != nil {
			return nil, err
		}
		lines[i] = strings.TrimSpace(l)
	}
	return lines, nil
}

func (p *proxies) reset() error {
	_, err := p.ask("reset")
	return err
}

// flights is the flights counted through each proxy since the last reset.
func (p *proxies) flights() ([]int64, error) {
	lines, err := p.ask("flights")
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(lines))
	for i, l := range lines {
		if out[i], err = strconv.ParseInt(l, 10, 64); err != nil {
			return nil, fmt.Errorf("proxy %s answered %q", p.addrs[i], l)
		}
	}
	return out, nil
}

func (p *proxies) stop() {
	_ = p.in.Close()
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// proxyChild is the child: it reads the round trip time and the
// "listen backend" pairs up to "go", starts the proxies, and answers
// "reset" and "flights" until its input ends.
func proxyChild() int {
	in := bufio.NewScanner(os.Stdin)
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "fleet proxies:", err)
		return 1
	}
	if !in.Scan() {
		return fail(errors.New("no round trip time"))
	}
	ns, err := strconv.ParseInt(in.Text(), 10, 64)
	if err != nil {
		return fail(err)
	}
	var ps []*sshkit.Proxy
	defer func() {
		for _, p := range ps {
			_ = p.Close()
		}
	}()
	for in.Scan() && in.Text() != "go" {
		listen, backend, _ := strings.Cut(in.Text(), " ")
		p, err := sshkit.StartProxy(listen, backend, time.Duration(ns))
		if err != nil {
			return fail(err)
		}
		ps = append(ps, p)
		fmt.Printf("listening %s\n", p.Addr)
	}
	for in.Scan() {
		for _, p := range ps {
			switch in.Text() {
			case "reset":
				p.Reset()
				fmt.Println("ok")
			case "flights":
				fmt.Println(p.Flights())
			default:
				fmt.Println("unknown command")
			}
		}
	}
	return 0
}
