package backtest

import (
	"slices"
	"time"
)

// Summary counts the results against their expectations.
type Summary struct {
	Deploys int
	// Expected is how many results count (Result.Counted): with an
	// expectation and judged.
	Expected int
	// FalseRollbacks are good deploys the policies would have rolled
	// back; Misses bad ones they would have kept; Caught bad ones they
	// would have rolled back.
	FalseRollbacks, Misses, Caught int
	// Precision is Caught over all rollbacks of expected deploys, Recall
	// Caught over all bad deploys; nil where there is nothing to divide
	// by.
	Precision, Recall *float64
	// MedianDetection is the median time from deploy to decision over the
	// bad deploys caught; nil when none was.
	MedianDetection *time.Duration
}

// Summarize counts results.
func Summarize(results []Result) Summary {
	s := Summary{Deploys: len(results)}
	var detection []time.Duration
	for _, r := range results {
		if !r.Counted() {
			continue
		}
		s.Expected++
		switch r.Mistake() {
		case "false rollback":
			s.FalseRollbacks++
		case "miss":
			s.Misses++
		default:
			if r.Deploy.Expect == Bad {
				s.Caught++
				if after, ok := r.DecidedAfter(); ok {
					detection = append(detection, after)
				}
			}
		}
	}
	s.Precision = ratio(s.Caught, s.Caught+s.FalseRollbacks)
	s.Recall = ratio(s.Caught, s.Caught+s.Misses)
	if n := len(detection); n > 0 {
		slices.Sort(detection)
		m := detection[n/2]
		if n%2 == 0 {
			m = (detection[n/2-1] + detection[n/2]) / 2
		}
		s.MedianDetection = &m
	}
	return s
}

func ratio(a, b int) *float64 {
	if b == 0 {
		return nil
	}
	v := float64(a) / float64(b)
	return &v
}
