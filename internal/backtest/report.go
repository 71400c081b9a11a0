package backtest

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable prints one row per result (service, environment, version,
// deploy time, policy, verdict, time to decision, expectation, deciding
// check and its measurement, or the verdict's reason), then the summary
// when some deploy had an expectation.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tENVIRONMENT\tVERSION\tTIME\tPOLICY\tVERDICT\tAFTER\tEXPECT\tCHECK\tMEASUREMENT")
	for _, r := range results {
		e := r.Deploy.Event
		after := "-"
		if d, ok := r.DecidedAfter(); ok {
			after = d.Round(time.Second).String()
		}
		why := r.Message
		if why == "" {
			why = r.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Service, e.Environment, e.Version,
			r.Deploy.Time().UTC().Format(time.RFC3339), dash(r.Policy), verdict(r), after, expectation(r), dash(r.Check), oneLine(why))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeSummary(w, results, Summarize(results))
}

// verdict is the result's verdict, saying whether it would have rolled
// back where the verdict alone does not tell (a failed run of a policy
// that only notifies, an inconclusive or marginal one that rolls back).
func verdict(r Result) string {
	switch {
	case r.Verdict == "failed" && !r.Rollback:
		return "failed (no rollback)"
	case r.Verdict != "failed" && r.Rollback:
		return r.Verdict + " (rollback)"
	}
	return r.Verdict
}

func expectation(r Result) string {
	s := dash(r.Deploy.Expect)
	if r.Deploy.Why != "" {
		s += " (" + r.Deploy.Why + ")"
	}
	if m := r.Mistake(); m != "" {
		s += ": " + strings.ToUpper(m)
	}
	return s
}

func writeSummary(w io.Writer, results []Result, s Summary) error {
	var from []string
	seen := map[string]bool{}
	notJudged := 0
	for _, r := range results {
		if r.Deploy.Expect == "" {
			continue
		}
		if !r.Counted() {
			notJudged++
		}
		if f := r.Deploy.ExpectFrom; !seen[f] {
			seen[f] = true
			from = append(from, f)
		}
	}
	if len(from) == 0 {
		_, err := fmt.Fprintf(w, "\n%d deploys; none has an expectation (\"expect\": \"good\" or \"bad\"), so there are no mistakes to count.\n", s.Deploys)
		return err
	}
	fmt.Fprintf(w, "\n%d deploys, %d judged against an expectation", s.Deploys, s.Expected)
	if notJudged > 0 {
		fmt.Fprintf(w, " (%d more not replayed)", notJudged)
	}
	fmt.Fprintln(w, ":")
	for _, f := range from {
		switch f {
		case FromWatcher:
			fmt.Fprintln(w, "  expectations are what the watcher did: a run it rolled back or failed is bad, one it passed is good (--expect=ID=good|bad says otherwise)")
		case FromFlag:
			fmt.Fprintln(w, "  some expectations are from --expect")
		}
	}
	var fr, miss []string
	for _, r := range results {
		switch r.Mistake() {
		case "false rollback":
			fr = append(fr, r.Deploy.Event.ID)
		case "miss":
			miss = append(miss, r.Deploy.Event.ID)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  false rollbacks\t%d\t%s\n", s.FalseRollbacks, ids("good deploys it would have rolled back", fr))
	fmt.Fprintf(tw, "  misses\t%d\t%s\n", s.Misses, ids("bad deploys it would have kept", miss))
	fmt.Fprintf(tw, "  precision\t%s\t(%d of %d rollbacks were of bad deploys)\n", fraction(s.Precision), s.Caught, s.Caught+s.FalseRollbacks)
	fmt.Fprintf(tw, "  recall\t%s\t(%d of %d bad deploys caught)\n", fraction(s.Recall), s.Caught, s.Caught+s.Misses)
	if s.MedianDetection != nil {
		fmt.Fprintf(tw, "  median time to detection\t%s\t(deploy to decision, over the %s caught)\n", s.MedianDetection.Round(time.Second), plural(s.Caught, "bad deploy"))
	} else {
		fmt.Fprintf(tw, "  median time to detection\t-\t(no bad deploy caught)\n")
	}
	return tw.Flush()
}

func ids(what string, list []string) string {
	if len(list) == 0 {
		return ""
	}
	return "(" + what + ": " + strings.Join(list, ", ") + ")"
}

func fraction(v *float64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'g', 3, 64)
}

// jsonDeploy is a result as `--json` prints it (CONTRACT 7.3); a value
// there is none of (no policy, no deciding check, no decision) is null.
type jsonDeploy struct {
	DeployID            string   `json:"deploy_id"`
	Service             string   `json:"service"`
	Environment         string   `json:"environment"`
	Version             string   `json:"version"`
	Policy              *string  `json:"policy"`
	Verdict             string   `json:"verdict"`
	Check               *string  `json:"check"`
	DecidedAfterSeconds *float64 `json:"decided_after_seconds"`
}

type jsonSummary struct {
	Summary        bool     `json:"summary"`
	Deploys        int      `json:"deploys"`
	FalseRollbacks int      `json:"false_rollbacks"`
	Misses         int      `json:"misses"`
	Precision      *float64 `json:"precision"`
	Recall         *float64 `json:"recall"`
}

// WriteJSON prints one JSON object per result, then the summary's.
func WriteJSON(w io.Writer, results []Result) error {
	enc := json.NewEncoder(w)
	for _, r := range results {
		e := r.Deploy.Event
		j := jsonDeploy{DeployID: e.ID, Service: e.Service, Environment: e.Environment, Version: e.Version,
			Policy: orNull(r.Policy), Verdict: r.Verdict, Check: orNull(r.Check)}
		if d, ok := r.DecidedAfter(); ok {
			secs := d.Seconds()
			j.DecidedAfterSeconds = &secs
		}
		if err := enc.Encode(j); err != nil {
			return err
		}
	}
	s := Summarize(results)
	return enc.Encode(jsonSummary{Summary: true, Deploys: s.Deploys, FalseRollbacks: s.FalseRollbacks, Misses: s.Misses,
		Precision: s.Precision, Recall: s.Recall})
}

func orNull(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a row on one line whatever a message holds.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}
