package rollback

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"golang.org/x/crypto/ssh"
)

// channelOf is the end of an SSH channel the SFTP client reads a server's
// answers from: the fuzzer's bytes, then the end of the stream.
type channelOf struct {
	r           io.Reader
	ssh.Channel // nil: only Read and Close are used
}

func (c channelOf) Read(p []byte) (int, error) { return c.r.Read(p) }
func (channelOf) Close() error                 { return nil }

// FuzzSFTPAnswers: whatever a host's sftp-server sends (a compromised or
// broken host), the client fails the requests cleanly: no panic, no
// answer given to a request it does not answer, no allocation beyond a
// packet's bound.
func FuzzSFTPAnswers(f *testing.F) {
	pkt := func(typ byte, id uint32, rest ...[]byte) []byte {
		var b sftpBuf
		b.begin(typ)
		b.u32(id)
		for _, r := range rest {
			b = append(b, r...)
		}
		return b.end()
	}
	str := func(s string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(s))), s...)
	}
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	f.Add(pkt(fxpStatus, 1, u32(0), str(""), str("")))
	f.Add(bytes.Join([][]byte{
		pkt(fxpHandle, 1, str("h")),
		pkt(fxpName, 2, u32(1), str("t"), str(""), u32(0)),
		pkt(fxpAttrs, 3, u32(attrSize|attrPermissions), u32(0), u32(4), u32(0o120777)),
		pkt(fxpData, 4, str("ab")),
		pkt(fxpName, 5, u32(0xffffffff)),
		pkt(fxpStatus, 6, u32(fxNoSuchFile), str("no"), str("")),
	}, nil))
	f.Add(pkt(fxpAttrs, 3, u32(attrExtended), u32(0xffffffff)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, fxpData})

	f.Fuzz(func(t *testing.T, stream []byte) {
		c := &sftpConn{ch: channelOf{r: bytes.NewReader(stream)}, wait: map[uint32]*sftpOp{}, done: make(chan struct{})}
		fl := c.flight()
		ops := []*sftpOp{fl.open("/a", fxfRead), fl.readlink("/b"), fl.lstat("/c"), fl.read("h", 0, 10), fl.readdir("h"), fl.remove("/d")}
		for i, op := range ops {
			id := uint32(i + 1)
			binary.BigEndian.PutUint32(op.pkt[5:], id)
			c.wait[id] = op
		}
		c.readLoop(bytes.NewReader(stream))
		<-c.done
		for _, op := range ops {
			select {
			case <-op.done:
			default:
				op.err = c.err // as send does when the session ends
			}
			_, _ = op.handle()
			_, _ = op.target()
			_, _ = op.info("/c")
			_, _ = op.data()
			_, _ = op.entries()
			if err := op.status(); err != nil && op.err == nil {
				var st *sftpStatus
				_ = errors.As(err, &st)
			}
		}
	})
}
