package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// report prints a line per round trip time and side (medians of the runs),
// the ratios, where the time goes and what the warm connections hold.
func report(phases []*phase, hosts int) {
	fmt.Printf("%-12s %-22s %4s  %11s  %23s  %11s  %9s  %11s  %11s  %11s\n",
		"round trip", "", "runs", "wall median", "(min ... max)", "round trips", "SFTP req.", "client CPU", "sshd CPU", "total CPU")
	for _, ph := range phases {
		for _, s := range ph.sides {
			if len(s.samples) == 0 {
				continue
			}
			walls := pick(s.samples, func(x sample) time.Duration { return x.wall })
			fmt.Printf("%-12s %-22s %4d  %11s  %23s  %11s  %9s  %11s  %11s  %11s\n", rttName(ph.rtt), s.name, len(s.samples), ms(median(walls)),
				"("+ms(slices.Min(walls))+" ... "+ms(slices.Max(walls))+")", tripsPerHost(s.samples), requestsPerHost(s, hosts),
				ms(median(pick(s.samples, func(x sample) time.Duration { return x.cpu }))),
				ms(median(pick(s.samples, func(x sample) time.Duration { return x.sshd }))),
				ms(median(pick(s.samples, func(x sample) time.Duration { return x.cpu + x.sshd }))))
		}
	}
	fmt.Println("(medians of the runs; round trips: what each host's rollback waited for, counted by the proxies, so only with a round trip time" +
		" above 0 (they do not depend on it), as the median over the runs of the mean over the hosts, and the range over every host and run;" +
		" SFTP requests per host: sent over the watcher's connections; CPU is user+sys.")
	for _, s := range phases[0].sides {
		fmt.Printf(" client CPU of %s: %s.\n", s.name, s.cpuWhat)
	}
	fmt.Println(" sshd CPU: the sshd listeners and every process below them (connection processes, shells, the commands they ran), from /proc, reaped children included;" +
		" the proxies run in a process of their own, counted in neither.)")
	for _, ph := range phases {
		fmt.Printf("\nround trip time %s:\n", rttName(ph.rtt))
		ratios(ph)
		whereTimeGoes(ph)
		if m := ph.mem; m != nil {
			fmt.Printf("  warm connections: %d; the watcher's Go heap +%.1f MiB for them (%.0f KiB a connection), goroutines +%d (%.1f a connection), resident memory %.1f MiB in all;"+
				" sshd: %d processes, %.1f MiB proportional set size (%.0f KiB a connection)\n",
				m.conns, mib(m.heap), kib(m.heap)/float64(m.conns), m.goroutines, float64(m.goroutines)/float64(m.conns), mib(m.rss),
				m.sshdProcs, mib(m.sshdPSS), kib(m.sshdPSS)/float64(m.conns))
		}
	}
	fmt.Println()
}

// ratios compares parallel-ssh's median wall and CPU with the watcher's.
// The goals (50x warm, 5x cold) were set on loopback.
func ratios(ph *phase) {
	med := map[string]sample{}
	for _, s := range ph.sides {
		if len(s.samples) == 0 {
			continue
		}
		med[s.key] = sample{wall: median(pick(s.samples, func(x sample) time.Duration { return x.wall })),
			cpu:  median(pick(s.samples, func(x sample) time.Duration { return x.cpu })),
			sshd: median(pick(s.samples, func(x sample) time.Duration { return x.sshd }))}
	}
	p, ok := med["pssh"]
	if !ok {
		return
	}
	for _, g := range []struct {
		key, name string
		goal      float64
	}{{"warm", "watcher, warm", 50}, {"cold", "watcher, cold", 5}} {
		w, ok := med[g.key]
		if !ok {
			continue
		}
		r := float64(p.wall) / float64(w.wall)
		verdict := ""
		if ph.rtt == 0 {
			verdict = " (goal >= " + strconv.FormatFloat(g.goal, 'g', -1, 64) + "x: met)"
			if r < g.goal {
				verdict = " (goal >= " + strconv.FormatFloat(g.goal, 'g', -1, 64) + "x: NOT met)"
			}
		}
		fmt.Printf("  parallel-ssh / %s: wall %.1fx%s; client CPU %.1fx; client+sshd CPU %.1fx\n",
			g.name, r, verdict, float64(p.cpu)/float64(w.cpu), float64(p.cpu+p.sshd)/float64(w.cpu+w.sshd))
	}
}

// whereTimeGoes splits each side's median wall time into its round trips
// (round trips per host times the round trip time: the floor however fast
// the machines) and the rest (CPU on both ends, queueing on 2 cores).
func whereTimeGoes(ph *phase) {
	if ph.rtt == 0 {
		return
	}
	for _, s := range ph.sides {
		trips := medianTrips(s.samples)
		if trips == 0 {
			continue
		}
		wall := median(pick(s.samples, func(x sample) time.Duration { return x.wall }))
		waited := time.Duration(trips * float64(ph.rtt))
		fmt.Printf("  %s: %.1f round trips x %s = %s waited, %s else (of %s)\n", s.name, trips, ph.rtt, ms(waited), ms(wall-waited), ms(wall))
	}
}

func medianTrips(ss []sample) float64 {
	var means []float64
	for _, s := range ss {
		if len(s.flights) == 0 {
			continue
		}
		var sum int64
		for _, f := range s.flights {
			sum += f
		}
		means = append(means, float64(sum)/float64(len(s.flights)))
	}
	if len(means) == 0 {
		return 0
	}
	slices.Sort(means)
	if n := len(means); n%2 == 0 {
		return (means[n/2-1] + means[n/2]) / 2
	}
	return means[len(means)/2]
}

func tripsPerHost(ss []sample) string {
	m := medianTrips(ss)
	if m == 0 {
		return "-"
	}
	lo, hi := int64(-1), int64(0)
	for _, s := range ss {
		for _, f := range s.flights {
			if lo < 0 || f < lo {
				lo = f
			}
			hi = max(hi, f)
		}
	}
	if lo == hi {
		return strconv.FormatFloat(m, 'f', 1, 64)
	}
	return fmt.Sprintf("%.1f (%d-%d)", m, lo, hi)
}

func requestsPerHost(s *side, hosts int) string {
	if s.key == "pssh" {
		return "-"
	}
	var per []float64
	for _, x := range s.samples {
		per = append(per, float64(x.requests)/float64(hosts))
	}
	slices.Sort(per)
	return strconv.FormatFloat(per[len(per)/2], 'f', 1, 64)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
func kib(b int64) float64 { return float64(b) / (1 << 10) }

func pick(s []sample, f func(sample) time.Duration) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, x := range s {
		out[i] = f(x)
	}
	return out
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	var u syscall.Utsname
	kernel := ""
	if syscall.Uname(&u) == nil {
		kernel = "Linux " + utsString(u.Release[:])
	}
	return fmt.Sprintf("%d cores (%s), %s", runtime.NumCPU(), model, kernel)
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

type cpuStat struct{ steal, total int64 }

// cpuTimes reads the machine's CPU time counters (/proc/stat, first line):
// the steal column is time the hypervisor gave to other guests.
func cpuTimes() cpuStat {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var st cpuStat
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i < 8 { // user nice system idle iowait irq softirq steal; guest time is already in user
			st.total += n
		}
		if i == 7 {
			st.steal = n
		}
	}
	return st
}

func commandVersion(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// shellQuote quotes s as one word for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellJoin shows argv as a command line one could paste.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:@", r))
		}) < 0 {
			q[i] = a
		} else {
			q[i] = shellQuote(a)
		}
	}
	return strings.Join(q, " ")
}
