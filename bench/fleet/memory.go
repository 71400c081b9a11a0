package main

import (
	"context"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollback"
)

// memory is what the warm pool's connections hold, on both ends.
type memory struct {
	conns      int
	heap       int64 // the watcher's Go heap in use, in bytes
	rss        int64 // the watcher's resident memory with them, in bytes
	goroutines int
	sshdProcs  int   // the connections' processes below the sshd listeners
	sshdPSS    int64 // their proportional set size, in bytes
}

// measureMemory dials every host into pool (empty so far) and measures
// what that added.
func measureMemory(ctx context.Context, pool *rollback.SSHPool, addrs []string, cfg policy.SSH, fl fleet, srv *servers) (*memory, error) {
	heap0, _, g0 := watcherMemory()
	if err := dialAll(ctx, pool, addrs, cfg, fl); err != nil {
		return nil, err
	}
	heap1, rss1, g1 := watcherMemory()
	m := &memory{conns: pool.Open(), heap: heap1 - heap0, rss: rss1, goroutines: g1 - g0}
	m.sshdProcs, m.sshdPSS = srv.connectionsPSS()
	return m, nil
}

// watcherMemory is this process's Go heap in use (after a GC), resident
// set and goroutines.
func watcherMemory() (heap, rss int64, goroutines int) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse), statusKB("/proc/self/status", "VmRSS:") * 1024, runtime.NumGoroutine()
}

// statusKB reads a "Key:   123 kB" line of a /proc file.
func statusKB(file, key string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// connectionsPSS is the number of processes below the sshd listeners and
// their proportional set size (shared pages divided among their sharers),
// in bytes.
func (s *servers) connectionsPSS() (int, int64) {
	procs, err := readProcs()
	if err != nil {
		return 0, 0
	}
	listeners := s.pids()
	var n int
	var pss int64
	for _, p := range treeOf(procs, append(listeners, s.adopted(procs)...)) {
		if slices.Contains(listeners, p) {
			continue
		}
		n++
		pss += statusKB("/proc/"+strconv.Itoa(p)+"/smaps_rollup", "Pss:") * 1024
	}
	return n, pss
}
