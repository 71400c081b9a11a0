// Command verdicts simulates comparison checks (README "Comparisons") on
// synthetic metrics and replays published failure cases of other canary
// judges, printing false-rollback rates, detection power and looks to
// detection. Deterministic (fixed seeds).
package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	start := time.Now()
	p := watcherPlan
	const deploys, powerDeploys = 500, 200
	fmt.Printf("Plan: window 10m, interval 30s (%d looks), step 15s, lookback 30m (%d samples), confidence %.2f: at most %.0f%% false rollbacks per deploy.\n",
		p.looks, p.lookbackSteps, p.confidence, 100*p.alpha())
	fmt.Printf("A deploy fails when ANY look fails; look k is tested at stats.LookAlpha(%.2f, k, %d).\n\n", p.alpha(), p.looks)

	fmt.Println("Samples against pre_deploy (stats.Shift, direction increase)")
	fmt.Println("  (false rollbacks: no change, and a change of exactly the margin, the worst case the null allows)")
	fmt.Printf("  %-10s %-6s %-18s %-18s %-26s %-26s %-26s\n", "kind", "margin", "no change", "shift = margin", "power 1.5x margin", "power 2x margin", "power 5x margin")
	for i, nz := range noises {
		seed := uint64(100 + i)
		fmt.Printf("  %-10s %-6.2f %-18s %-18s", nz.name, nz.margin,
			falseRate(runSamples(seed, p, nz, deploys, 0)), falseRate(runSamples(seed+50, p, nz, deploys, 1)))
		for j, m := range []float64{1.5, 2, 5} {
			fmt.Printf(" %-26s", power(runSamples(seed*10+uint64(j), p, nz, powerDeploys, m)))
		}
		fmt.Printf("\n  %-10s %s\n", "", nz.what)
	}
	fmt.Println()
	fmt.Println("Counts against pre_deploy (stats.RatesSeries on the per-step counts, min_total 200)")
	fmt.Printf("  %-13s %-6s %-18s %-18s %-26s %-26s %-26s\n", "kind", "margin", "no change", "ratio = 1+margin", "power 1.5x margin", "power 2x margin", "power 5x margin")
	for i, c := range countKinds {
		seed := uint64(200 + i)
		fmt.Printf("  %-13s %-6.2f %-18s %-18s", c.name, c.margin,
			falseRate(runCounts(seed, p, c, deploys, 0, 0, false)), falseRate(runCounts(seed+50, p, c, deploys, 1, 0, false)))
		for j, m := range []float64{1.5, 2, 5} {
			fmt.Printf(" %-26s", power(runCounts(seed*10+uint64(j), p, c, powerDeploys, m, 0, false)))
		}
		fmt.Printf("\n  %-13s %s\n", "", c.what)
	}
	fmt.Println()
	fmt.Println("Variance only: bursty errors, same mean (the per-step error rate gamma-mixed, shape 0.5: variance x(1 + 2 x errors expected per step))")
	fmt.Printf("  %-13s %-36s %-36s\n", "kind", "burstier after only", "bursty on both sides")
	for i, c := range countKinds {
		b := c
		b.burst = 0.5
		fmt.Printf("  %-13s per-step %-27s per-step %-27s\n", c.name,
			falseRate(runCounts(uint64(250+i), p, c, deploys, 0, 0.5, false)), falseRate(runCounts(uint64(260+i), p, b, deploys, 0, 0, false)))
		fmt.Printf("  %-13s totals   %-27s totals   %-27s\n", "",
			falseRate(runCounts(uint64(250+i), p, c, deploys, 0, 0.5, true)), falseRate(runCounts(uint64(260+i), p, b, deploys, 0, 0, true)))
	}
	fmt.Println("  (per-step: stats.RatesSeries, which estimates each side's dispersion; totals: stats.Rates, which cannot)")
	fmt.Println()
	fmt.Println("Not the deploy's fault: an incident (latency +50%) that began before the deploy, gaussian kind (stats.Trend on the lookback)")
	for _, m := range []int{2, 5, 10} {
		failed, excused := runIncident(uint64(400+m), p, noises[0], deploys, m)
		fmt.Printf("  began %2d minutes before: a look failed in %d of %d deploys; the trend guard made %d of those inconclusive\n", m, failed, deploys, excused)
	}
	fmt.Println()
	fmt.Printf("Canary against baseline (1 canary host, 4 baseline hosts, same span; latency margin %.2f, errors margin %.1f)\n", canaryFleet.margin, countMargin)
	for _, c := range []struct {
		what     string
		incident bool
		bad      float64
	}{
		{"no change", false, 0},
		{"incident on every host (latency x2, errors x5)", true, 0},
		{"bad canary, 2x margin", false, 2},
		{"bad canary, 5x margin", false, 5},
		{"bad canary, 5x margin, during the incident", true, 5},
	} {
		s, n := runCanary(300, p, canaryFleet, deploys, c.incident, c.bad)
		fmt.Printf("  %-45s latency: %-26s errors: %s\n", c.what, verdicts(s), verdicts(n))
	}
	fmt.Println()
	fmt.Println("Published cases replayed (confidence 0.98 unless said)")
	ok := true
	for _, c := range publishedCases() {
		r := c.run()
		mark := "ok  "
		if r.failed != c.mustFail {
			mark, ok = "BAD ", false
		}
		verdict := "pass"
		if r.failed {
			verdict = "FAIL"
		}
		fmt.Printf("  %s%-4s %s\n        %s\n", mark, verdict, c.name, r.detail)
	}
	fmt.Printf("\n(%.1fs)\n", time.Since(start).Seconds())
	if !ok {
		fmt.Println("a published case came out the wrong way")
		os.Exit(1)
	}
}

func falseRate(o outcome) string {
	return fmt.Sprintf("%d of %d (%.1f%%)", o.failed, o.deploys, 100*o.rate())
}

func power(o outcome) string {
	return fmt.Sprintf("%3.0f%%, median look %4.1f", 100*o.rate(), o.medianLook())
}

func verdicts(o outcome) string {
	if o.failed == 0 {
		return fmt.Sprintf("failed 0 of %d", o.deploys)
	}
	return fmt.Sprintf("failed %d of %d (%.1f%%), median look %.1f", o.failed, o.deploys, 100*o.rate(), o.medianLook())
}
