package web

import (
	"strconv"
	"strings"

	"github.com/rollback-watcher/watcher/internal/audit"
)

// compareChartView is a small SVG of a sample comparison's two sides:
// the before (or baseline) samples on the left half, the after (or
// canary) samples on the right, each in time order with its median, and
// the margin as a band above (below, around) the before median over the
// after half: an after median inside the band is within the margin.
type compareChartView struct {
	Label                    string
	W, H                     string
	Left, Right, Top, Bottom string
	PlotW, PlotH             string
	DivX                     string
	YTicks                   []tickView
	Band                     *zoneView
	BandTitle                string
	Sides                    []compareSideView
}

type compareSideView struct {
	Class, Name        string
	NameX, NameY       string
	Lines              []string
	Points             []pointView
	MedianX1, MedianX2 string
	MedianY            string
	MedianLabel        string
	MedianLX, MedianLY string
	Empty              string
	EmptyX, EmptyY     string
}

// buildCompareChart draws d's samples; nil when d is not a sample
// comparison or carries no samples.
func buildCompareChart(d *audit.ComparisonDetail) *compareChartView {
	if d == nil || d.Kind == "counts" || len(d.After.Samples) == 0 && len(d.Before.Samples) == 0 {
		return nil
	}
	// The scale and ticks of the measurement charts, on a plot of its own.
	c := chartView{width: 380, height: 140, left: 50, right: 10, top: 22, bottom: 8}
	c.plotW = c.width - c.left - c.right
	c.plotH = c.height - c.top - c.bottom

	lo, hi, seen := 0.0, 0.0, false
	see := func(v *float64) {
		if v == nil {
			return
		}
		if !seen {
			lo, hi, seen = *v, *v, true
			return
		}
		lo, hi = min(lo, *v), max(hi, *v)
	}
	for _, s := range [][]*float64{d.Before.Samples, d.After.Samples} {
		for _, v := range s {
			see(v)
		}
	}
	see(d.Before.Median)
	see(d.After.Median)
	bandLo, bandHi, band := marginBand(d)
	if band {
		see(&bandLo)
		see(&bandHi)
	}
	if !seen {
		lo, hi = 0, 1
	}
	c.axis(lo, hi)

	an, bn := SideNames(d)
	v := &compareChartView{
		Label: bn + " and " + an + " samples",
		W:     fmtCoord(c.width), H: fmtCoord(c.height),
		Left: fmtCoord(c.left), Right: fmtCoord(c.left + c.plotW), Top: fmtCoord(c.top), Bottom: fmtCoord(c.top + c.plotH),
		PlotW: fmtCoord(c.plotW), PlotH: fmtCoord(c.plotH),
		DivX:   fmtCoord(c.left + c.plotW/2),
		YTicks: c.YTicks,
	}
	half := c.plotW / 2
	if band {
		y1, y2 := c.y(bandHi), c.y(bandLo)
		v.Band = &zoneView{X: fmtCoord(c.left + half), Y: fmtCoord(y1), W: fmtCoord(half), H: fmtCoord(y2 - y1)}
		v.BandTitle = "within the margin (" + percent(d.Margin) + " of the " + bn + " median): " + formatNum(bandLo) + " to " + formatNum(bandHi)
	}
	side := func(s audit.SideDetail, class, name string, x0 float64) compareSideView {
		sv := compareSideView{Class: class, Name: name + " (" + strconv.Itoa(s.N) + ")", NameX: fmtCoord(x0 + half/2), NameY: fmtCoord(c.top - 7)}
		n := len(s.Samples)
		var seg []string
		flush := func() {
			if len(seg) > 1 {
				sv.Lines = append(sv.Lines, strings.Join(seg, " "))
			}
			seg = nil
		}
		for i, p := range s.Samples {
			if p == nil {
				flush()
				continue
			}
			x, y := x0+6+(half-12)*(float64(i)+0.5)/float64(n), c.y(*p)
			seg = append(seg, fmtCoord(x)+","+fmtCoord(y))
			sv.Points = append(sv.Points, pointView{X: fmtCoord(x), Y: fmtCoord(y), R: "2", Class: "cs " + class, Title: formatNum(*p)})
		}
		flush()
		if len(sv.Points) == 0 {
			sv.Empty, sv.EmptyX, sv.EmptyY = "no samples", fmtCoord(x0+half/2), fmtCoord(c.top+c.plotH/2)
		}
		if s.Median != nil {
			y := c.y(*s.Median)
			sv.MedianX1, sv.MedianX2, sv.MedianY = fmtCoord(x0), fmtCoord(x0+half), fmtCoord(y)
			sv.MedianLabel, sv.MedianLX = "median "+formatNum(*s.Median), fmtCoord(x0+half-3)
			if y-4 < c.top+10 {
				sv.MedianLY = fmtCoord(y + 12)
			} else {
				sv.MedianLY = fmtCoord(y - 4)
			}
		}
		return sv
	}
	v.Sides = []compareSideView{side(d.Before, "before", bn, c.left), side(d.After, "after", an, c.left+half)}
	return v
}

// marginBand is where the after median stays within the margin of the
// before median in the bad direction.
func marginBand(d *audit.ComparisonDetail) (lo, hi float64, ok bool) {
	mb, mv := d.Before.Median, d.MarginValue.Value
	if mb == nil || mv == nil || *mv <= 0 {
		return 0, 0, false
	}
	switch d.Direction {
	case "decrease":
		return *mb - *mv, *mb, true
	case "either":
		return *mb - *mv, *mb + *mv, true
	}
	return *mb, *mb + *mv, true
}
