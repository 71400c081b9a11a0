package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/web"
)

// runTable shows one run as its measurements: what each check saw, against
// what, and how it counted, then the verdict and what followed. A
// comparison's numbers follow its row, indented.
func runTable(w io.Writer, runID string, recs []audit.Record) error {
	if len(recs) == 0 {
		return fmt.Errorf("no audit records for run %s", runID)
	}
	first := recs[0]
	fmt.Fprintf(w, "run %s: %s %s in %s, policy %s\n\n", runID, first.Service, first.Version, first.Environment, dash(first.Policy))
	// The rows are aligned as one table, then the notes go in between:
	// a line without cells in the tabwriter would realign every block.
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(measurementHeader, "\t"))
	var others []audit.Record
	var notes [][]string
	for _, r := range recs {
		if r.Kind != audit.Measurement {
			others = append(others, r)
			continue
		}
		fmt.Fprintln(tw, strings.Join(measurementCells(r), "\t"))
		d, _ := r.Measurement()
		notes = append(notes, comparisonNotes(d.Comparison))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i, row := range strings.Split(strings.TrimSuffix(table.String(), "\n"), "\n") {
		fmt.Fprintln(w, row)
		if i > 0 && i <= len(notes) {
			for _, n := range notes[i-1] {
				fmt.Fprintln(w, "    "+n)
			}
		}
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range others {
		fmt.Fprintln(tw, strings.Join(recordCells(r), "\t"))
	}
	return tw.Flush()
}

// measurementHeader heads the columns of measurementCells.
var measurementHeader = []string{"TIME", "CHECK", "VALUE", "BASELINE", "RATIO", "THRESHOLD", "OUTCOME", "COUNTS"}

// measurementCells are a measurement record's row in `history --run`, also
// what `publish --wait` prints as it comes, so that the two agree.
func measurementCells(r audit.Record) []string {
	// A detail that does not decode whole still shows what did.
	d, _ := r.Measurement()
	c := d.Counts
	check := oneLine(d.Check)
	if d.Verification != nil {
		// Measured again once the rollback completed (README "Did the
		// rollback help?"); its counts are the verification's.
		check += " (after rollback)"
	}
	return []string{r.Time.Local().Format("15:04:05.000"), check,
		num(d.Value), num(d.Baseline.Value), num(d.Ratio.Value), dash(oneLine(d.Threshold)), oneLine(d.Outcome),
		fmt.Sprintf("pass %d fail %d inconclusive %d error %d", c.Pass, c.Fail, c.Inconclusive, c.Error)}
}

// recordCells are another record's row under the measurements in
// `history --run`: its time, kind and message.
func recordCells(r audit.Record) []string {
	return []string{r.Time.Local().Format("15:04:05.000"), r.Kind, oneLine(r.Message)}
}

// comparisonNotes are the lines under a comparison's row: its numbers as
// the status page shows them, and for samples a sparkline of each side on
// one scale.
func comparisonNotes(d *audit.ComparisonDetail) []string {
	if d == nil {
		return nil
	}
	var lines []string
	for _, l := range web.ComparisonLines(d) {
		lines = append(lines, oneLine(l))
	}
	if d.Kind == "counts" || len(d.After.Samples) == 0 && len(d.Before.Samples) == 0 {
		return lines
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range [][]*float64{d.Before.Samples, d.After.Samples} {
		for _, v := range s {
			if v != nil {
				lo, hi = min(lo, *v), max(hi, *v)
			}
		}
	}
	an, bn := web.SideNames(d)
	width := max(len(an), len(bn))
	side := func(name string, s audit.SideDetail) string {
		shown := strconv.Itoa(len(s.Samples)) + " samples"
		if len(s.Samples) < s.N {
			shown = strconv.Itoa(len(s.Samples)) + " of " + strconv.Itoa(s.N) + " samples"
		}
		return fmt.Sprintf("%-*s %s  (%s, %s to %s)", width, name, sparkline(s.Samples, lo, hi), shown, num(&lo), num(&hi))
	}
	return append(lines, side(bn, d.Before), side(an, d.After))
}

var sparks = []rune("▁▂▃▄▅▆▇█")

// sparkline draws vs on the scale lo..hi, a space where a value is
// missing.
func sparkline(vs []*float64, lo, hi float64) string {
	var b strings.Builder
	for _, v := range vs {
		switch {
		case v == nil:
			b.WriteRune(' ')
		case hi <= lo:
			b.WriteRune(sparks[len(sparks)/2])
		default:
			i := int(math.Round((*v - lo) / (hi - lo) * float64(len(sparks)-1)))
			b.WriteRune(sparks[min(max(i, 0), len(sparks)-1)])
		}
	}
	return b.String()
}

// num prints a measured number compactly, "-" when there is none.
func num(v *float64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'g', 6, 64)
}
