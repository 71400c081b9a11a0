package sshkit

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards the TCP connections made to Addr to a backend, as a host
// that far away would carry them: every chunk is delivered half a round
// trip after it was sent, in each direction, and a new connection waits
// one round trip before anything passes (the TCP handshake, which the
// kernel completed at once). No kernel feature (netem) is needed, and the
// delay applies only to what goes through the proxy.
//
// It counts flights: the round trips a client waits for. A connection's
// first flight is its TCP handshake; after that, a flight is counted when
// something reaches the client after it sent something: a client that
// sends its requests together and then waits for their answers makes one
// flight of them, however many they are, and what it sends without
// waiting for an answer (a last close) makes none. The count is exact only
// with a round trip time well above the time a client takes between the
// writes of one flight (a millisecond does).
type Proxy struct {
	Addr    string
	backend string
	rtt     time.Duration
	ln      net.Listener

	flights atomic.Int64
	conns   atomic.Int64

	mu     sync.Mutex
	open   map[net.Conn]bool
	closed bool
}

// StartProxy listens on listen ("127.0.0.2:0") and forwards to backend with
// rtt added to every round trip.
func StartProxy(listen, backend string, rtt time.Duration) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), backend: backend, rtt: rtt, ln: ln, open: map[net.Conn]bool{}}
	go p.accept()
	return p, nil
}

// Flights is the number of flights counted since the start or the last
// Reset, over every connection.
func (p *Proxy) Flights() int64 { return p.flights.Load() }

// Conns is the number of connections accepted since the start or the last
// Reset.
func (p *Proxy) Conns() int64 { return p.conns.Load() }

// Reset zeroes the counts.
func (p *Proxy) Reset() {
	p.flights.Store(0)
	p.conns.Store(0)
}

// Close stops listening and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	err := p.ln.Close()
	for c := range p.open {
		_ = c.Close()
	}
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.open[c] = true
	return true
}

func (p *Proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.open, c)
		_ = c.Close()
	}
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		go p.serve(c)
	}
}

// serve forwards one connection.
func (p *Proxy) serve(c net.Conn) {
	p.conns.Add(1)
	p.flights.Add(1)
	time.Sleep(p.rtt)
	b, err := net.Dial("tcp", p.backend)
	if err != nil {
		p.untrack(c)
		return
	}
	if !p.track(b) {
		p.untrack(c)
		return
	}
	var mu sync.Mutex
	waiting := false // the client sent something that got no answer yet
	sent := func() {
		mu.Lock()
		defer mu.Unlock()
		waiting = true
	}
	delivered := func() {
		mu.Lock()
		defer mu.Unlock()
		if waiting {
			p.flights.Add(1)
			waiting = false
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(b, c, sent, nil) }()
	go func() { defer wg.Done(); p.pipe(c, b, nil, delivered) }()
	wg.Wait()
	p.untrack(c, b)
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk half a round trip after it was read,
// until src ends; then it closes dst for writing.
// read is called as a chunk arrives, before just before it is delivered.
func (p *Proxy) pipe(dst, src net.Conn, read, before func()) {
	q := make(chan chunk, 256)
	go func() {
		defer close(q)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if read != nil {
					read()
				}
				q <- chunk{bytes.Clone(buf[:n]), time.Now().Add(p.rtt / 2)}
			}
			if err != nil {
				return
			}
		}
	}()
	failed := false
	for ch := range q {
		if failed {
			continue // drained, so that the reader ends
		}
		if d := time.Until(ch.due); d > 0 {
			time.Sleep(d)
		}
		if before != nil {
			before()
		}
		if _, err := dst.Write(ch.b); err != nil {
			failed = true
			_ = src.Close()
		}
	}
	// The sender is done (or gone): so is this direction.
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
