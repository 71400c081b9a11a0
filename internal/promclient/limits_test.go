package promclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alecthomas/units"
)

// bigAnswer serves an instant vector of n series generated on the fly, as
// a Prometheus asked for `{__name__=~".+"}` on a big server would: the test
// must not hold the answer in memory to serve it.
func bigAnswer(n int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		bw := bufio.NewWriterSize(w, 64<<10)
		bw.WriteString(`{"status":"success","data":{"resultType":"vector","result":[`)
		buf := make([]byte, 0, 128)
		for i := range n {
			buf = buf[:0]
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, `{"metric":{"__name__":"big","i":"`...)
			buf = strconv.AppendInt(buf, int64(i), 10)
			buf = append(buf, `"},"value":[1700000000,"1"]}`...)
			if _, err := bw.Write(buf); err != nil {
				return // the client stopped reading
			}
		}
		bw.WriteString(`]}}`)
		bw.Flush()
	}
}

// heapPeak runs f while sampling the heap, and returns how far HeapInuse
// rose above where it was before f (after a GC), at its highest, and where
// it is after f and another GC.
func heapPeak(t *testing.T, f func()) (peak, after uint64) {
	t.Helper()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var (
		mu  sync.Mutex
		top = base
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			mu.Lock()
			top = max(top, ms.HeapInuse)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	f()
	close(stop)
	wg.Wait()
	runtime.ReadMemStats(&ms)
	top = max(top, ms.HeapInuse)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return top - base, max(ms.HeapInuse, base) - base
}

// TestQueryOversizeAnswer: one answer of 524k series (23 MB) took the
// watcher from 33 MB to 7.8 GB. The answer is cut at the series limit
// while it streams in: an error that names the limit, and a heap that stays
// in the tens of MB and comes back afterwards.
func TestQueryOversizeAnswer(t *testing.T) {
	srv := httptest.NewServer(bigAnswer(524288))
	defer srv.Close()
	c := mustNew(t, Options{URL: srv.URL, Timeout: DefaultTimeout * 6})
	var err error
	peak, after := heapPeak(t, func() {
		_, err = c.Query(context.Background(), `{__name__=~".+"}`, time.Now())
	})
	t.Logf("heap: peak +%d MiB, after GC +%d KiB; err: %v", peak>>20, after>>10, err)
	if err == nil || !strings.Contains(err.Error(), "more than 10000 series") || !strings.Contains(err.Error(), "prometheus.max_series") {
		t.Errorf("err = %v, want the series limit named (more than 10000 series, prometheus.max_series)", err)
	}
	if peak > 32<<20 {
		t.Errorf("heap in use rose by %d MiB during the query, want less than 32 MiB", peak>>20)
	}
	if after > 4<<20 {
		t.Errorf("heap in use still %d MiB above its start after a GC", after>>20)
	}
}

// TestQueryByteLimit: an answer past max_response_bytes is cut off where
// the limit falls, even inside one value (a label of 20 MB), so the decoder
// never holds more than the limit.
func TestQueryByteLimit(t *testing.T) {
	huge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bw := bufio.NewWriter(w)
		bw.WriteString(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{"x":"`)
		chunk := []byte(strings.Repeat("x", 4096))
		for range (20 << 20) / len(chunk) {
			if _, err := bw.Write(chunk); err != nil {
				return
			}
		}
		bw.WriteString(`"},"value":[1,"1"]}]}}`)
		bw.Flush()
	})
	for _, tc := range []struct {
		name    string
		handler http.Handler
		opts    Options
		want    string
		heap    uint64 // the most the heap may grow: the decoder holds up to the byte limit in one value
	}{
		{"one huge label, default limit", huge, Options{}, "answer larger than 8MiB, the limit (prometheus.max_response_bytes)", 48 << 20},
		{"one huge label", huge, Options{MaxResponseBytes: 1 << 20}, "answer larger than 1MiB, the limit (prometheus.max_response_bytes)", 16 << 20},
		{"many series under the series limit", bigAnswer(524288), Options{MaxResponseBytes: 1 << 20, MaxSeries: 1 << 20},
			"answer larger than 1MiB, the limit (prometheus.max_response_bytes)", 16 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			tc.opts.URL = srv.URL
			c := mustNew(t, tc.opts)
			var err error
			peak, after := heapPeak(t, func() {
				_, err = c.Query(context.Background(), "up", time.Now())
			})
			t.Logf("heap: peak +%d MiB, after GC +%d KiB", peak>>20, after>>10)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
			var le *LimitError
			if !errors.As(err, &le) {
				t.Errorf("err %v is not a *LimitError", err)
			}
			if peak > tc.heap {
				t.Errorf("heap in use rose by %d MiB during the query, want less than %d MiB", peak>>20, tc.heap>>20)
			}
			if after > 4<<20 {
				t.Errorf("heap in use still %d MiB above its start after a GC", after>>20)
			}
		})
	}
}

// TestQueryAnswers covers the answers a real Prometheus does not give on
// demand: limits met exactly, error bodies, a body that is not JSON.
func TestQueryAnswers(t *testing.T) {
	vector := func(n int) string {
		var b strings.Builder
		b.WriteString(`{"status":"success","data":{"resultType":"vector","result":[`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"metric":{"i":"%d"},"value":[1700000000.5,"%d"]}`, i, i)
		}
		b.WriteString(`]},"warnings":["a warning",{"nested":[1,2]}]}`)
		return b.String()
	}
	three := vector(3)
	tests := []struct {
		name    string
		status  int
		body    string
		opts    Options
		want    int // series
		wantErr string
	}{
		{name: "series limit met exactly", status: 200, body: three, opts: Options{MaxSeries: 3}, want: 3},
		{name: "one series past the limit", status: 200, body: three, opts: Options{MaxSeries: 2}, wantErr: "more than 2 series"},
		{name: "byte limit met exactly", status: 200, body: three, opts: Options{MaxResponseBytes: units.Base2Bytes(len(three))}, want: 3},
		{name: "one byte past the limit", status: 200, body: three, opts: Options{MaxResponseBytes: units.Base2Bytes(len(three) - 1)}, wantErr: "prometheus.max_response_bytes"},
		{name: "scalar", status: 200, body: `{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}`, want: 1},
		{name: "empty vector", status: 200, body: `{"status":"success","data":{"resultType":"vector","result":[]}}`, want: 0},
		{name: "api error", status: 422, body: `{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory"}`,
			wantErr: "execution: query processing would load too many samples"},
		{name: "api timeout", status: 503, body: `{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}`,
			wantErr: "timeout: query timed out"},
		{name: "not json", status: 502, body: "<html>\n<body>Bad   Gateway</body>\n</html>", wantErr: "prometheus answered 502 Bad Gateway: <html> <body>Bad Gateway</body> </html>"},
		{name: "empty body", status: 500, wantErr: "prometheus answered 500 Internal Server Error: (empty body)"},
		{name: "not an answer", status: 200, body: `{"status":"success"}`, wantErr: "without data"},
		{name: "string", status: 200, body: `{"status":"success","data":{"resultType":"string","result":[1,"s"]}}`, wantErr: "query returned a string"},
		{name: "truncated", status: 200, body: three[:len(three)/2], wantErr: "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if err := r.ParseForm(); err != nil || r.Form.Get("query") != "up" || r.Form.Get("time") != "1700000000.5" {
					t.Errorf("request form %v (%v), want query=up time=1700000000.5", r.Form, err)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			tt.opts.URL = srv.URL
			vec, err := mustNew(t, tt.opts).Query(context.Background(), "up", time.Unix(1700000000, 5e8))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(vec) != tt.want || vec == nil {
				t.Errorf("%d series (%#v), want %d", len(vec), vec, tt.want)
			}
		})
	}
}

// TestQueryRangeAnswers covers range answers: a matrix is decoded series by
// series under the same limits as a vector; anything else is refused.
func TestQueryRangeAnswers(t *testing.T) {
	matrix := func(n int) string {
		var b strings.Builder
		b.WriteString(`{"status":"success","data":{"resultType":"matrix","result":[`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"metric":{"i":"%d"},"values":[[1700000000,"1"],[1700000015,"%d"]]}`, i, i)
		}
		b.WriteString(`]}}`)
		return b.String()
	}
	three := matrix(3)
	tests := []struct {
		name    string
		body    string
		opts    Options
		want    int // series
		wantErr string
	}{
		{name: "matrix", body: three, want: 3},
		{name: "empty matrix", body: `{"status":"success","data":{"resultType":"matrix","result":[]}}`, want: 0},
		{name: "one series past the limit", body: three, opts: Options{MaxSeries: 2}, wantErr: "more than 2 series"},
		{name: "one byte past the limit", body: three, opts: Options{MaxResponseBytes: units.Base2Bytes(len(three) - 1)}, wantErr: "prometheus.max_response_bytes"},
		{name: "vector", body: `{"status":"success","data":{"resultType":"vector","result":[]}}`, wantErr: "range query returned a vector, want a matrix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if err := r.ParseForm(); err != nil || r.URL.Path != "/api/v1/query_range" || r.Form.Get("query") != "up" ||
					r.Form.Get("start") != "1700000000" || r.Form.Get("end") != "1700000015" || r.Form.Get("step") != "15" {
					t.Errorf("request %s %v (%v), want /api/v1/query_range query=up start=1700000000 end=1700000015 step=15", r.URL.Path, r.Form, err)
				}
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			tt.opts.URL = srv.URL
			mat, err := mustNew(t, tt.opts).QueryRange(context.Background(), "up", time.Unix(1700000000, 0), time.Unix(1700000015, 0), 15*time.Second)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(mat) != tt.want || mat == nil {
				t.Fatalf("%d series (%#v), want %d", len(mat), mat, tt.want)
			}
			if tt.want > 0 && (len(mat[2].Values) != 2 || mat[2].Values[1].Value != 2) {
				t.Errorf("series 2 = %v, want two samples ending in 2", mat[2].Values)
			}
		})
	}
	if _, err := mustNew(t, Options{URL: "http://127.0.0.1:1"}).QueryRange(context.Background(), "up", time.Unix(2, 0), time.Unix(1, 0), time.Second); err == nil {
		t.Error("a range ending before it starts was sent")
	}
}

func TestNewRejectsNegativeLimits(t *testing.T) {
	for _, o := range []Options{{URL: "http://localhost:9090", MaxSeries: -1}, {URL: "http://localhost:9090", MaxResponseBytes: -1}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}
