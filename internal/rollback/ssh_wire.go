package rollback

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// An SFTP version 3 client (draft-ietf-secsh-filexfer-02, with OpenSSH's
// extensions) built around flights: requests that do not depend on one
// another are written to the channel together and answered together, so a
// host far away costs one round trip per flight rather than one per
// request. A request that needs an earlier answer (the handle an open
// returns, the release a previousVersion file names) goes in the next
// flight. The server (OpenSSH's sftp-server) handles a session's requests
// one at a time, in the order they arrive: within a flight, a rename
// written after a symlink sees the symlink. The draft lets a server handle
// requests in any order, so with a server that does not say it is OpenSSH
// a flight's requests go one at a time, each after the previous answer:
// slower, never out of order.
//
// github.com/pkg/sftp cannot be driven this way: each of its calls blocks
// for its answer, a read loops until its buffer is full and a directory
// listing until its end, and calls made from several goroutines reach the
// wire in whatever order the scheduler runs them.

// SFTP packet types.
const (
	fxpInit          = 1
	fxpVersion       = 2
	fxpOpen          = 3
	fxpClose         = 4
	fxpRead          = 5
	fxpWrite         = 6
	fxpLstat         = 7
	fxpFsetstat      = 10
	fxpOpendir       = 11
	fxpReaddir       = 12
	fxpRemove        = 13
	fxpRmdir         = 15
	fxpStat          = 17
	fxpReadlink      = 19
	fxpSymlink       = 20
	fxpStatus        = 101
	fxpHandle        = 102
	fxpData          = 103
	fxpName          = 104
	fxpAttrs         = 105
	fxpExtended      = 200
	fxpExtendedReply = 201
)

// Open flags.
const (
	fxfRead   = 0x01
	fxfWrite  = 0x02
	fxfCreate = 0x08
	fxfExcl   = 0x20
)

// Status codes.
const (
	fxOK               = 0
	fxEOF              = 1
	fxNoSuchFile       = 2
	fxPermissionDenied = 3
)

const (
	attrSize        = 0x1
	attrUIDGID      = 0x2
	attrPermissions = 0x4
	attrACModTime   = 0x8
	attrExtended    = 0x80000000
)

// sftpChunk is the most a read or write request carries; maxSFTPPacket
// bounds what the client accepts from the server (OpenSSH answers at most
// 256 KiB).
const (
	sftpChunk     = 32 << 10
	maxSFTPPacket = 256<<10 + 1024
)

// sftpStatus is the server's answer that a request failed (or, for reads,
// reached the end). It matches fs.ErrNotExist and fs.ErrPermission like
// the local filesystem's errors do.
type sftpStatus struct {
	code uint32
	msg  string
}

func (e *sftpStatus) Error() string {
	if e.msg != "" {
		return fmt.Sprintf("sftp: %s (status %d)", e.msg, e.code)
	}
	return fmt.Sprintf("sftp: status %d", e.code)
}

func (e *sftpStatus) Is(target error) bool {
	switch e.code {
	case fxNoSuchFile:
		return target == fs.ErrNotExist
	case fxPermissionDenied:
		return target == fs.ErrPermission
	case fxEOF:
		return target == io.EOF
	}
	return false
}

// sftpConn is an SFTP session on one SSH channel. Safe for concurrent use:
// flights from several goroutines interleave whole.
type sftpConn struct {
	ch   ssh.Channel
	exts map[string]string // from the server's version packet

	wmu sync.Mutex // one flight written at a time

	mu     sync.Mutex
	nextID uint32
	wait   map[uint32]*sftpOp
	err    error // why the session ended

	done chan struct{} // closed when the session ended
	// serial sends a flight's requests one at a time: the server is not
	// known to handle them in order.
	serial bool
	// sent counts the requests sent (SSHPool.SFTPRequests); set before
	// the first flight.
	sent *atomic.Int64
}

// startSFTP opens a session channel on client, starts the sftp subsystem
// and exchanges versions.
func startSFTP(client *ssh.Client) (*sftpConn, error) {
	ch, reqs, err := client.OpenChannel("session", nil)
	if err != nil {
		return nil, err
	}
	go ssh.DiscardRequests(reqs)
	go func() { _, _ = io.Copy(io.Discard, ch.Stderr()) }()
	ok, err := ch.SendRequest("subsystem", true, ssh.Marshal(struct{ Name string }{"sftp"}))
	if err == nil && !ok {
		err = errors.New("the server refused the sftp subsystem")
	}
	if err != nil {
		_ = ch.Close()
		return nil, err
	}
	c := &sftpConn{ch: ch, exts: map[string]string{}, wait: map[uint32]*sftpOp{}, done: make(chan struct{}),
		serial: !sftpInOrder(string(client.ServerVersion()))}
	var init sftpBuf
	init.begin(fxpInit)
	init.u32(3)
	if _, err := ch.Write(init.end()); err != nil {
		_ = ch.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(ch, 8<<10)
	typ, body, err := readPacket(r)
	if err == nil && typ != fxpVersion {
		err = fmt.Errorf("expected a version packet, got type %d", typ)
	}
	if err == nil {
		d := sftpDec{b: body}
		if v := d.u32(); d.err == nil && v != 3 {
			err = fmt.Errorf("server speaks SFTP version %d, not 3", v)
		}
		for d.err == nil && len(d.b) > 0 {
			name, data := d.str(), d.str()
			if d.err == nil {
				c.exts[name] = data
			}
		}
		if err == nil {
			err = d.err
		}
	}
	if err != nil {
		_ = ch.Close()
		return nil, err
	}
	go c.readLoop(r)
	return c, nil
}

// inOrderServer tells whether the SSH server's version banner names a
// server whose sftp-server answers a session's requests in the order they
// arrive (OpenSSH's, also run by Dropbear, which says so only in its own
// name: it is sent one request at a time).
func inOrderServer(banner string) bool {
	return strings.HasPrefix(banner, "SSH-2.0-OpenSSH_")
}

// sftpInOrder is inOrderServer; a test makes the OpenSSH server of the
// tests one that is not known to keep order.
var sftpInOrder = inOrderServer

func readPacket(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n < 1 || n > maxSFTPPacket {
		return 0, nil, fmt.Errorf("sftp packet of %d bytes", n)
	}
	body := make([]byte, n-1)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[4], body, nil
}

// readLoop hands each answer to the request it answers, until the channel
// ends; then every request still waiting fails with why.
func (c *sftpConn) readLoop(r io.Reader) {
	var err error
	for {
		var typ byte
		var body []byte
		typ, body, err = readPacket(r)
		if err != nil {
			break
		}
		if len(body) < 4 {
			err = fmt.Errorf("sftp answer of type %d without a request id", typ)
			break
		}
		id := binary.BigEndian.Uint32(body)
		c.mu.Lock()
		op := c.wait[id]
		delete(c.wait, id)
		c.mu.Unlock()
		if op == nil {
			err = fmt.Errorf("sftp answer to request %d, which is not waiting", id)
			break
		}
		op.typ, op.body = typ, body[4:]
		close(op.done)
	}
	if err == io.EOF {
		err = errors.New("SFTP session closed")
	}
	c.fail(err)
	_ = c.ch.Close()
}

// fail ends the session with err (the first reason wins).
func (c *sftpConn) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	close(c.done)
}

func (c *sftpConn) close() {
	c.fail(errors.New("SFTP session closed"))
	_ = c.ch.Close()
}

func (c *sftpConn) hasExt(name, version string) bool {
	v, ok := c.exts[name]
	return ok && (version == "" || v == version)
}

// sftpOp is one request of a flight and, once the flight is back, its
// answer.
type sftpOp struct {
	pkt  []byte
	done chan struct{}
	typ  byte   // answer's packet type
	body []byte // answer after the request id
	err  error  // the session ended before the answer
}

// flight collects requests to send together.
type flight struct {
	c   *sftpConn
	ops []*sftpOp
}

func (c *sftpConn) flight() *flight { return &flight{c: c} }

func (f *flight) add(b *sftpBuf) *sftpOp {
	op := &sftpOp{pkt: b.end(), done: make(chan struct{})}
	f.ops = append(f.ops, op)
	return op
}

func (f *flight) req(typ byte, strs ...string) *sftpOp {
	var b sftpBuf
	b.begin(typ)
	b.u32(0) // the id, set when sent
	for _, s := range strs {
		b.str(s)
	}
	return f.add(&b)
}

func (f *flight) lstat(p string) *sftpOp    { return f.req(fxpLstat, p) }
func (f *flight) stat(p string) *sftpOp     { return f.req(fxpStat, p) }
func (f *flight) readlink(p string) *sftpOp { return f.req(fxpReadlink, p) }
func (f *flight) opendir(p string) *sftpOp  { return f.req(fxpOpendir, p) }
func (f *flight) readdir(h string) *sftpOp  { return f.req(fxpReaddir, h) }
func (f *flight) closeHandle(h string) *sftpOp {
	return f.req(fxpClose, h)
}
func (f *flight) remove(p string) *sftpOp { return f.req(fxpRemove, p) }
func (f *flight) rmdir(p string) *sftpOp  { return f.req(fxpRmdir, p) }

// symlink makes link name target. OpenSSH takes the two paths in the
// opposite order to the draft's, target first, and every client follows it.
func (f *flight) symlink(target, link string) *sftpOp {
	return f.req(fxpSymlink, target, link)
}

// open opens p with the given flags; a file it creates gets the server's
// default mode (0666 less the umask).
func (f *flight) open(p string, pflags uint32) *sftpOp {
	var b sftpBuf
	b.begin(fxpOpen)
	b.u32(0)
	b.str(p)
	b.u32(pflags)
	b.u32(0) // no attributes
	return f.add(&b)
}

func (f *flight) read(h string, off uint64, n uint32) *sftpOp {
	var b sftpBuf
	b.begin(fxpRead)
	b.u32(0)
	b.str(h)
	b.u64(off)
	b.u32(n)
	return f.add(&b)
}

// write writes data at off, in requests of at most sftpChunk (none for
// no data).
func (f *flight) write(h string, off uint64, data []byte) []*sftpOp {
	var ops []*sftpOp
	for len(data) > 0 {
		n := min(len(data), sftpChunk)
		var b sftpBuf
		b.begin(fxpWrite)
		b.u32(0)
		b.str(h)
		b.u64(off)
		b.str(string(data[:n]))
		ops = append(ops, f.add(&b))
		data, off = data[n:], off+uint64(n)
	}
	return ops
}

// chmod sets the mode of an open file (fsetstat).
func (f *flight) chmod(h string, perm fs.FileMode) *sftpOp {
	var b sftpBuf
	b.begin(fxpFsetstat)
	b.u32(0)
	b.str(h)
	b.u32(attrPermissions)
	b.u32(uint32(perm.Perm()))
	return f.add(&b)
}

func (f *flight) fsync(h string) *sftpOp {
	return f.req(fxpExtended, extFsync, h)
}

func (f *flight) posixRename(oldname, newname string) *sftpOp {
	return f.req(fxpExtended, extPosixRename, oldname, newname)
}

// send writes the flight's requests in one write and waits for every
// answer. It fails only when the session ended first; each request's own
// outcome is read from its op.
func (f *flight) send() error {
	if len(f.ops) == 0 {
		return nil
	}
	if f.c.serial && len(f.ops) > 1 {
		for i, op := range f.ops {
			if err := (&flight{c: f.c, ops: []*sftpOp{op}}).send(); err != nil {
				for _, rest := range f.ops[i+1:] {
					rest.err = err
				}
				return err
			}
		}
		return nil
	}
	c := f.c
	size := 0
	for _, op := range f.ops {
		size += len(op.pkt)
	}
	buf := make([]byte, 0, size)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		for _, op := range f.ops {
			op.err = err
		}
		return err
	}
	for _, op := range f.ops {
		c.nextID++
		binary.BigEndian.PutUint32(op.pkt[5:], c.nextID)
		c.wait[c.nextID] = op
		buf = append(buf, op.pkt...)
	}
	c.mu.Unlock()
	if c.sent != nil {
		c.sent.Add(int64(len(f.ops)))
	}

	c.wmu.Lock()
	_, err := c.ch.Write(buf)
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
		_ = c.ch.Close()
	}
	var lost error
	for _, op := range f.ops {
		select {
		case <-op.done:
		case <-c.done:
			select {
			case <-op.done:
			default:
				c.mu.Lock()
				op.err = c.err
				c.mu.Unlock()
				lost = op.err
			}
		}
	}
	return lost
}

// status is the outcome of a request answered with a status packet.
func (op *sftpOp) status() error {
	if op.err != nil {
		return op.err
	}
	if op.typ != fxpStatus {
		return fmt.Errorf("sftp: unexpected answer of type %d", op.typ)
	}
	d := sftpDec{b: op.body}
	code, msg := d.u32(), d.str()
	if d.err != nil {
		return d.err
	}
	if code == fxOK {
		return nil
	}
	return &sftpStatus{code: code, msg: msg}
}

// answer checks that op got an answer of type want, or returns the
// failure it got instead.
func (op *sftpOp) answer(want byte) (sftpDec, error) {
	if op.err != nil {
		return sftpDec{}, op.err
	}
	if op.typ == want {
		return sftpDec{b: op.body}, nil
	}
	if err := op.status(); err != nil {
		return sftpDec{}, err
	}
	return sftpDec{}, fmt.Errorf("sftp: unexpected answer of type %d", op.typ)
}

func (op *sftpOp) handle() (string, error) {
	d, err := op.answer(fxpHandle)
	if err != nil {
		return "", err
	}
	h := d.str()
	return h, d.err
}

// info is the answer to a stat or lstat of p.
func (op *sftpOp) info(p string) (fs.FileInfo, error) {
	d, err := op.answer(fxpAttrs)
	if err != nil {
		return nil, err
	}
	a := d.attrs()
	return &sftpInfo{name: path.Base(p), a: a}, d.err
}

// target is the answer to a readlink.
func (op *sftpOp) target() (string, error) {
	d, err := op.answer(fxpName)
	if err != nil {
		return "", err
	}
	if n := d.u32(); d.err == nil && n != 1 {
		return "", fmt.Errorf("sftp: readlink answered %d names", n)
	}
	s := d.str()
	return s, d.err
}

// data is the answer to a read; io.EOF at the end of the file.
func (op *sftpOp) data() ([]byte, error) {
	d, err := op.answer(fxpData)
	if err != nil {
		return nil, err
	}
	b := d.str()
	return []byte(b), d.err
}

// entries is the answer to a readdir, without "." and ".."; io.EOF at the
// end of the directory.
func (op *sftpOp) entries() ([]fs.FileInfo, error) {
	d, err := op.answer(fxpName)
	if err != nil {
		return nil, err
	}
	n := d.u32()
	var out []fs.FileInfo
	for i := uint32(0); i < n && d.err == nil; i++ {
		name := d.str()
		_ = d.str() // the long name, ls -l style
		a := d.attrs()
		if name != "." && name != ".." {
			out = append(out, &sftpInfo{name: name, a: a})
		}
	}
	return out, d.err
}

// sftpBuf builds one packet: length, type, fields.
type sftpBuf []byte

func (b *sftpBuf) begin(typ byte) { *b = append((*b)[:0], 0, 0, 0, 0, typ) }
func (b *sftpBuf) u32(v uint32)   { *b = binary.BigEndian.AppendUint32(*b, v) }
func (b *sftpBuf) u64(v uint64)   { *b = binary.BigEndian.AppendUint64(*b, v) }
func (b *sftpBuf) str(s string)   { b.u32(uint32(len(s))); *b = append(*b, s...) }
func (b *sftpBuf) end() []byte {
	binary.BigEndian.PutUint32(*b, uint32(len(*b)-4))
	return *b
}

// sftpDec reads fields; the first short read sets err and every later
// read returns zero.
type sftpDec struct {
	b   []byte
	err error
}

var errShortPacket = errors.New("sftp: packet too short")

func (d *sftpDec) u32() uint32 {
	if d.err != nil || len(d.b) < 4 {
		d.err = cmpErr(d.err, errShortPacket)
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *sftpDec) u64() uint64 {
	hi, lo := d.u32(), d.u32()
	return uint64(hi)<<32 | uint64(lo)
}

func (d *sftpDec) str() string {
	n := d.u32()
	if d.err != nil || uint32(len(d.b)) < n {
		d.err = cmpErr(d.err, errShortPacket)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func cmpErr(first, next error) error {
	if first != nil {
		return first
	}
	return next
}

type sftpAttrs struct {
	flags        uint32
	size         uint64
	perm         uint32
	atime, mtime uint32
}

func (d *sftpDec) attrs() sftpAttrs {
	var a sftpAttrs
	a.flags = d.u32()
	if a.flags&attrSize != 0 {
		a.size = d.u64()
	}
	if a.flags&attrUIDGID != 0 {
		d.u32()
		d.u32()
	}
	if a.flags&attrPermissions != 0 {
		a.perm = d.u32()
	}
	if a.flags&attrACModTime != 0 {
		a.atime, a.mtime = d.u32(), d.u32()
	}
	if a.flags&attrExtended != 0 {
		for n := d.u32(); n > 0 && d.err == nil; n-- {
			d.str()
			d.str()
		}
	}
	return a
}

// sftpInfo is a fs.FileInfo from SFTP attributes (whole seconds).
type sftpInfo struct {
	name string
	a    sftpAttrs
}

func (fi *sftpInfo) Name() string       { return fi.name }
func (fi *sftpInfo) Size() int64        { return int64(fi.a.size) }
func (fi *sftpInfo) ModTime() time.Time { return time.Unix(int64(fi.a.mtime), 0) }
func (fi *sftpInfo) IsDir() bool        { return fi.Mode().IsDir() }
func (fi *sftpInfo) Sys() any           { return nil }

// Mode maps the Unix mode the server sends to fs.FileMode.
func (fi *sftpInfo) Mode() fs.FileMode {
	m := fs.FileMode(fi.a.perm & 0o777)
	switch fi.a.perm & 0o170000 {
	case 0o040000:
		m |= fs.ModeDir
	case 0o120000:
		m |= fs.ModeSymlink
	case 0o010000:
		m |= fs.ModeNamedPipe
	case 0o140000:
		m |= fs.ModeSocket
	case 0o060000:
		m |= fs.ModeDevice
	case 0o020000:
		m |= fs.ModeDevice | fs.ModeCharDevice
	}
	if fi.a.perm&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if fi.a.perm&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if fi.a.perm&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}
