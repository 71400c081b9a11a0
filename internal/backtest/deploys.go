// Package backtest replays the policies over past deploys against
// Prometheus's history (CONTRACT 7.3): what would each deploy have got?
// The judging is watch.Replay, the live run's own code; this package reads
// the deploys, matches them to their policies, replays them a few at a
// time and counts the mistakes against what was expected of each.
package backtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
)

// Expectations of a deploy.
const (
	Good = "good"
	Bad  = "bad"
)

// Where an expectation came from (Deploy.ExpectFrom).
const (
	FromFile    = "file"    // the deploys file's "expect"
	FromWatcher = "watcher" // what the watcher did with the deploy's run
	FromFlag    = "flag"    // the command line overrode it
)

// Deploy is one deploy to replay.
type Deploy struct {
	Event events.Deploy
	// Start is when the run starts: the deploy's time for a deploys file,
	// the live run's start for one read from the audit.
	Start time.Time
	// Expect is Good, Bad or "" (no expectation); ExpectFrom says who
	// said so and Why, for the watcher's, what it did ("rolled back").
	Expect, ExpectFrom, Why string
	// Line is the deploys file's line, 0 for one from the audit.
	Line int
	// liveWindowEnd is when the live run's window closed (the audit's
	// run.started says), which places its start exactly.
	liveWindowEnd time.Time
	// liveStart: Start is the live run's own, recorded in its run.started
	// (older records have only its window's end to place it by).
	liveStart bool
	// skipped is the audit's reason the watcher did not validate it.
	skipped string
}

// Time is when the deploy happened.
func (d Deploy) Time() time.Time {
	if !d.Event.Time.IsZero() {
		return d.Event.Time
	}
	return d.Start
}

// ReadFile reads deploys from r: one native JSON deploy event per line
// (README "Deploy events"), decoded and validated as the watcher decodes
// the events it receives, with the deploy's "time" (required here) and an
// optional "expect": "good" or "bad". Blank lines and lines starting with
// "#" are skipped. Errors name the line: "deploys.jsonl:3: ...".
func ReadFile(r io.Reader, name string) ([]Deploy, error) {
	br := bufio.NewReader(r)
	var out []Deploy
	seen := map[string]int{}
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			d, derr := decodeLine(t)
			if derr != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, n, derr)
			}
			if prev, ok := seen[d.Event.ID]; ok {
				// The watcher starts one run per event id: a second line
				// with the same id would be replayed as no live run was.
				return nil, fmt.Errorf("%s:%d: deploy id %q again (first on line %d): the watcher validates an id once", name, n, d.Event.ID, prev)
			}
			seen[d.Event.ID] = n
			d.Line = n
			out = append(out, d)
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
	}
}

func decodeLine(line []byte) (Deploy, error) {
	if len(line) > events.MaxEventSize {
		return Deploy{}, fmt.Errorf("%d bytes, over the %d bytes of an event", len(line), events.MaxEventSize)
	}
	body, expect, names, err := splitExpect(line)
	if err != nil {
		return Deploy{}, err
	}
	subject := events.Subject(events.DeploysPrefix, names[1], names[0])
	ev, err := events.DecodeDeploy(subject, nil, body)
	if err != nil {
		return Deploy{}, err
	}
	if ev.Time.IsZero() {
		return Deploy{}, fmt.Errorf(`deploy %s has no "time": a backtest needs each deploy's time (RFC 3339, e.g. "2026-11-25T18:00:00Z") to replay its run from there`, ev.ID)
	}
	d := Deploy{Event: ev, Start: ev.Time, Expect: expect}
	if expect != "" {
		d.ExpectFrom = FromFile
	}
	return d, nil
}

// splitExpect takes the top-level "expect" out of a JSON object, which the
// deploy decoder would refuse as an unknown field, keeping every other
// member as it was (a duplicate key too, for the decoder to refuse). names
// are the service and environment, for the subject the decoder checks. A
// line that is no JSON object is returned whole, for the decoder to say
// what is wrong with it.
func splitExpect(line []byte) (body []byte, expect string, names [2]string, err error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	if tok, terr := dec.Token(); terr != nil || tok != json.Delim('{') {
		return line, "", names, nil
	}
	var b bytes.Buffer
	b.WriteByte('{')
	found := false
	for dec.More() {
		tok, terr := dec.Token()
		key, ok := tok.(string)
		var raw json.RawMessage
		if terr != nil || !ok || dec.Decode(&raw) != nil {
			return line, "", names, nil
		}
		switch key {
		case "expect":
			if found {
				return nil, "", names, errors.New(`"expect" given twice`)
			}
			found = true
			if json.Unmarshal(raw, &expect) != nil || (expect != Good && expect != Bad) {
				return nil, "", names, fmt.Errorf(`"expect" is %s: want "good" or "bad"`, raw)
			}
			continue
		case "service":
			_ = json.Unmarshal(raw, &names[0])
		case "environment":
			_ = json.Unmarshal(raw, &names[1])
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(raw)
	}
	if _, terr := dec.Token(); terr != nil {
		return line, "", names, nil
	}
	b.WriteByte('}')
	// Whatever follows the object (a second one) goes along, for the
	// decoder to refuse.
	rest, _ := io.ReadAll(dec.Buffered())
	b.Write(rest)
	return b.Bytes(), expect, names, nil
}

// FromAudit finds the deploys the watcher saw between from and to (a run
// started, or no policy matched) in its audit records, oldest first. Each
// validated one expects what the watcher did with it: a run that failed
// or was rolled back (by its verdict, an alert or a person) is Bad, one
// that passed or ended marginal without a rollback Good; an inconclusive
// or superseded run, or one not decided yet, expects nothing.
func FromAudit(recs []audit.Record, from, to time.Time) []Deploy {
	type run struct {
		d       Deploy
		verdict string
		rolled  bool
	}
	var runs []*run
	byRun := map[string]*run{}
	byDeploy := map[string]*run{}
	for _, r := range recs {
		if r.Time.Before(from) || !r.Time.Before(to) {
			continue
		}
		switch r.Kind {
		case audit.RunStarted:
			det, _ := r.RunStarted()
			if byRun[r.RunID] != nil {
				continue // written again by a replica taking the run over
			}
			ev := events.Deploy{ID: r.DeployID, Service: r.Service, Environment: r.Environment, Version: r.Version,
				PreviousVersion: det.PreviousVersion, Hosts: det.Hosts, Labels: det.Labels, Time: det.DeployTime, Format: det.Format}
			start := r.Time
			if !det.Start.IsZero() {
				start = det.Start
			}
			ru := &run{d: Deploy{Event: ev, Start: start, liveWindowEnd: det.WindowEnd, liveStart: !det.Start.IsZero()}}
			runs = append(runs, ru)
			byRun[r.RunID] = ru
			if r.DeployID != "" {
				byDeploy[r.DeployID] = ru
			}
		case audit.RunSkipped:
			if det, _ := r.RunSkipped(); det.Reason != "" || det.Type != "" || r.Version == "" {
				continue // a duplicate or no deploy: nothing new to replay
			}
			ev := events.Deploy{ID: r.DeployID, Service: r.Service, Environment: r.Environment, Version: r.Version}
			runs = append(runs, &run{d: Deploy{Event: ev, Start: r.Time, skipped: r.Message}})
		}
	}
	// Verdicts and rollbacks may come after --to: a run started inside
	// the range is judged by all the watcher did with it.
	for _, r := range recs {
		ru := byRun[r.RunID]
		if ru == nil && r.RunID == "" && r.DeployID != "" {
			ru = byDeploy[r.DeployID]
		}
		if ru == nil && r.Kind == audit.RollbackRequested && r.RunID == "" && r.DeployID == "" {
			// A rollback asked by hand or by an alert names the service
			// only: it undid the latest run of that version before it.
			for _, c := range runs {
				e := c.d.Event
				if c.d.skipped == "" && e.Service == r.Service && e.Environment == r.Environment && e.Version == r.Version && !c.d.Start.After(r.Time) {
					ru = c
				}
			}
		}
		if ru == nil {
			continue
		}
		switch r.Kind {
		case audit.RunPassed, audit.RunFailed, audit.RunInconclusive, audit.RunMarginal, audit.RunSuperseded:
			if ru.verdict == "" {
				ru.verdict = r.Kind
			}
		case audit.RollbackRequested:
			ru.rolled = true
		}
	}
	out := make([]Deploy, 0, len(runs))
	for _, ru := range runs {
		d := ru.d
		switch {
		case ru.rolled:
			d.Expect, d.Why = Bad, "rolled back"
		case ru.verdict == audit.RunFailed:
			d.Expect, d.Why = Bad, "failed"
		case ru.verdict == audit.RunPassed:
			d.Expect, d.Why = Good, "passed"
		case ru.verdict == audit.RunMarginal:
			d.Expect, d.Why = Good, "marginal, kept"
		}
		if d.Expect != "" {
			d.ExpectFrom = FromWatcher
		}
		out = append(out, d)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Override sets the expectations given on the command line, "ID=good" or
// "ID=bad", over those of ds. It fails for a malformed one or an id no
// deploy has.
func Override(ds []Deploy, overrides []string) error {
	for _, o := range overrides {
		id, want, ok := strings.Cut(o, "=")
		if !ok || (want != Good && want != Bad) {
			return fmt.Errorf("%q: want DEPLOY_ID=good or DEPLOY_ID=bad", o)
		}
		found := false
		for i := range ds {
			if ds[i].Event.ID == id {
				ds[i].Expect, ds[i].ExpectFrom, ds[i].Why, found = want, FromFlag, "", true
			}
		}
		if !found {
			return fmt.Errorf("%q: no deploy with id %s among those replayed", o, id)
		}
	}
	return nil
}
