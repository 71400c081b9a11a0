package watch

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// score is where a scored run stands (README "Scores"): 100 x (weight of
// the checks not failed) / (weight of the checks judged). A check is
// judged once it has a pass or a fail and is not inconclusive; dry-run
// checks never count.
type score struct {
	value          float64 // NaN while no check is judged
	judged         float64 // weight of the judged checks
	failed         []int   // failed checks (by index), critical or not
	criticalFailed []int
	detail         audit.ScoreDetail
}

func scoreOf(s runSnapshot, p *policy.Policy) score {
	sc := score{detail: audit.ScoreDetail{Pass: p.Score.Pass, Marginal: p.Score.Marginal}}
	var failedWeight float64
	for i, c := range p.Checks {
		if c.DryRun {
			continue
		}
		t := s.Checks[i].Tally
		state := string(c.State(t))
		switch c.State(t) {
		case policy.CheckFailed:
			sc.judged += c.Weight
			failedWeight += c.Weight
			sc.failed = append(sc.failed, i)
			if c.Critical {
				sc.criticalFailed = append(sc.criticalFailed, i)
			}
		case policy.CheckOK:
			if t.Pass+t.Fail > 0 {
				sc.judged += c.Weight
			} else {
				state = "unjudged"
			}
		}
		sc.detail.Checks = append(sc.detail.Checks, audit.ScoreCheck{Check: c.Name, Weight: c.Weight, Critical: c.Critical, State: state})
	}
	sc.value = math.NaN()
	if sc.judged > 0 {
		sc.value = 100 * (sc.judged - failedWeight) / sc.judged
		sc.detail.Score = sc.value
	}
	return sc
}

// failNow decides a scored run that must fail before its window ends: a
// critical check failed, or the score fell below marginal.
func (sc score) failNow(s runSnapshot, p *policy.Policy) (move, bool) {
	mv := move{kind: moveDecide, verdict: VerdictFailed, record: audit.RunFailed, rollback: true, detail: audit.VerdictDetail{Score: &sc.detail}}
	switch {
	case len(sc.criticalFailed) > 0:
		mv.checks = sc.criticalFailed
		mv.reason = failReason(s, p, sc.criticalFailed) + "; a critical check fails the run whatever the score (" + sc.text() + ")"
		return mv, true
	case sc.judged > 0 && sc.value < p.Score.Marginal:
		mv.checks = sc.failed
		mv.reason = fmt.Sprintf("score %s below marginal %s: %s", formatScore(sc.value), formatScore(p.Score.Marginal), failReason(s, p, sc.failed))
		return mv, true
	}
	return move{}, false
}

// closeMove decides a scored run whose window closed with every
// measurement taken: passed at score.pass or above, marginal at
// score.marginal or above (on_marginal says whether that rolls back),
// failed below.
func (sc score) closeMove(s runSnapshot, p *policy.Policy) move {
	detail := audit.VerdictDetail{Score: &sc.detail}
	why := sc.text()
	if len(sc.failed) > 0 {
		why += "; " + failReason(s, p, sc.failed)
	}
	switch {
	case sc.value >= p.Score.Pass:
		return move{kind: moveDecide, verdict: VerdictPassed, record: audit.RunPassed, detail: detail,
			reason: fmt.Sprintf("window closed with score %s >= pass %s: %s", formatScore(sc.value), formatScore(p.Score.Pass), why)}
	case sc.value >= p.Score.Marginal:
		mv := move{kind: moveDecide, verdict: VerdictMarginal, record: audit.RunMarginal, checks: sc.failed, detail: detail,
			reason: fmt.Sprintf("window closed marginal, score %s below pass %s and >= marginal %s: %s", formatScore(sc.value), formatScore(p.Score.Pass), formatScore(p.Score.Marginal), why)}
		mv.detail.OnMarginal = p.OnMarginal
		switch p.OnMarginal {
		case policy.OnMarginalRollback:
			mv.reason += "; on_marginal: rollback"
			mv.rollback = true
		case policy.OnMarginalAsk:
			mv.reason += "; on_marginal: ask, the rollback waits for `watcher approve`"
			mv.rollback, mv.ask = true, true
		default:
			mv.reason += "; on_marginal: keep, nothing rolled back"
		}
		return mv
	}
	return move{kind: moveDecide, verdict: VerdictFailed, record: audit.RunFailed, rollback: true, checks: sc.failed, detail: detail,
		reason: fmt.Sprintf("window closed with score %s below marginal %s: %s", formatScore(sc.value), formatScore(p.Score.Marginal), why)}
}

// text is "score 62.5 (weight 5 of 8 not failed; left out: latency inconclusive)".
func (sc score) text() string {
	var notFailed float64
	var out []string
	for _, c := range sc.detail.Checks {
		switch c.State {
		case string(policy.CheckOK):
			notFailed += c.Weight
		case string(policy.CheckInconclusive), "unjudged":
			out = append(out, c.Check+" "+c.State)
		}
	}
	t := fmt.Sprintf("score %s (weight %s of %s not failed", formatScore(sc.value), formatScore(notFailed), formatScore(sc.judged))
	if len(out) > 0 {
		t += "; left out: " + strings.Join(out, ", ")
	}
	return t + ")"
}

// formatScore writes a score to one decimal at most: 62.5, 80.
func formatScore(v float64) string {
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}
