package web

import (
	"strconv"
	"strings"
	"time"
)

// The status page's SVG charts.

// chartView is one small SVG chart. Coordinates are strconv-formatted
// numbers; labels are text for html/template to escape.
type chartView struct {
	Label, Note                  string
	W, H                         string
	Left, Right, Top, Bottom     string
	PlotW, PlotH                 string
	LabelX, LabelY, NoteX, NoteY string
	MidX, MidY                   string
	YTicks, XTicks               []tickView
	Thresholds                   []thresholdView
	Zones                        []zoneView
	Lines                        []string // polyline points, one per run of values without a gap
	Points, Nulls                []pointView
	Last                         *tickView // the newest value, labelled with its number
	NowX                         string
	Empty                        string

	nullY                      float64
	width, height, left, right float64
	top, bottom, plotW, plotH  float64
	ymin, ymax                 float64
	xmin, xmax                 time.Time
}

type tickView struct{ X, Y, Label, Anchor string }

type thresholdView struct{ Y, LabelX, LabelY, Label, Class string }

type zoneView struct{ X, Y, W, H string }

type pointView struct {
	X, Y, R, Class, Title string
	Path                  string
}

func fmtCoord(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// buildChart plots the measurements' values (as val picks them) over time
// against the thresholds: a line through the values with gaps where there
// is none, a point per value coloured by its outcome, a mark on the time
// axis for each measurement without a value, each threshold as a dashed
// line with the side that fails shaded.
func buildChart(label string, ms []measurement, val func(measurement) *float64, ths []threshold, start, end, now time.Time, note string) chartView {
	c := chartView{Label: label, Note: note, width: 380, height: 150, left: 50, right: 10, top: 20, bottom: 22}
	c.plotW = c.width - c.left - c.right
	c.plotH = c.height - c.top - c.bottom
	c.W, c.H = fmtCoord(c.width), fmtCoord(c.height)
	c.Left, c.Top = fmtCoord(c.left), fmtCoord(c.top)
	c.Right, c.Bottom = fmtCoord(c.left+c.plotW), fmtCoord(c.top+c.plotH)
	c.PlotW, c.PlotH = fmtCoord(c.plotW), fmtCoord(c.plotH)
	c.LabelX, c.LabelY = fmtCoord(c.left), "13"
	c.NoteX, c.NoteY = fmtCoord(c.left+c.plotW), "13"
	c.MidX, c.MidY = fmtCoord(c.left+c.plotW/2), fmtCoord(c.top+c.plotH/2)

	// Time axis: the run's start to the window's end (active run) or to
	// when it ended, stretched to hold every measurement.
	c.xmin, c.xmax = start, end
	for _, m := range ms {
		if c.xmin.IsZero() || m.at.Before(c.xmin) {
			c.xmin = m.at
		}
		if m.at.After(c.xmax) {
			c.xmax = m.at
		}
	}
	if !now.IsZero() && now.After(c.xmin) && now.After(c.xmax) {
		c.xmax = now
	}
	if !c.xmax.After(c.xmin) {
		c.xmax = c.xmin.Add(time.Second)
	}

	// Value axis: every value and threshold, with some room.
	lo, hi, seen := 0.0, 0.0, false
	see := func(v float64) {
		if !seen {
			lo, hi, seen = v, v, true
			return
		}
		lo, hi = min(lo, v), max(hi, v)
	}
	nvals := 0
	for _, m := range ms {
		if v := val(m); v != nil {
			see(*v)
			nvals++
		}
	}
	for _, t := range ths {
		see(t.value)
	}
	if !seen {
		lo, hi = 0, 1
	}
	c.axis(lo, hi)

	for _, t := range ths {
		y := c.y(t.value)
		tv := thresholdView{Y: fmtCoord(y), LabelX: fmtCoord(c.left + c.plotW - 3), Label: t.name + " " + formatNum(t.value), Class: "th"}
		// The label sits on the side that passes, away from the shading.
		if strings.HasPrefix(t.name, "min") {
			tv.LabelY = fmtCoord(y - 4)
			c.Zones = append(c.Zones, zoneView{X: c.Left, Y: fmtCoord(y), W: c.PlotW, H: fmtCoord(c.top + c.plotH - y)})
		} else {
			tv.LabelY = fmtCoord(y + 12)
			c.Zones = append(c.Zones, zoneView{X: c.Left, Y: c.Top, W: c.PlotW, H: fmtCoord(y - c.top)})
		}
		c.Thresholds = append(c.Thresholds, tv)
	}

	c.nullY = c.top + c.plotH - 5
	var seg []string
	flush := func() {
		if len(seg) > 1 {
			c.Lines = append(c.Lines, strings.Join(seg, " "))
		}
		seg = nil
	}
	for _, m := range ms {
		x := c.x(m.at)
		title := m.at.UTC().Format("15:04:05") + "  "
		v := val(m)
		if v != nil {
			title += formatNum(*v) + "  "
		}
		title += m.outcome
		if m.reason != "" && m.reason != "ok" {
			title += ": " + m.reason
		}
		if v == nil {
			flush()
			c.Nulls = append(c.Nulls, pointView{
				X: fmtCoord(x), Y: fmtCoord(c.nullY), Class: "pt " + outcomeClass(m.outcome), Title: title,
				Path: "M" + fmtCoord(x-3.5) + " " + fmtCoord(c.nullY-3.5) + "L" + fmtCoord(x+3.5) + " " + fmtCoord(c.nullY+3.5) +
					"M" + fmtCoord(x-3.5) + " " + fmtCoord(c.nullY+3.5) + "L" + fmtCoord(x+3.5) + " " + fmtCoord(c.nullY-3.5),
			})
			continue
		}
		y := c.y(*v)
		seg = append(seg, fmtCoord(x)+","+fmtCoord(y))
		r := "3.5"
		if m.outcome == "fail" {
			r = "5"
		}
		c.Points = append(c.Points, pointView{X: fmtCoord(x), Y: fmtCoord(y), R: r, Class: "pt " + outcomeClass(m.outcome), Title: title})
	}
	flush()
	for i := len(ms) - 1; i >= 0; i-- {
		v := val(ms[i])
		if v == nil {
			continue
		}
		x, y := c.x(ms[i].at), c.y(*v)
		l := tickView{Label: formatNum(*v), X: fmtCoord(x - 7), Anchor: "end"}
		if x < c.left+60 {
			l.X, l.Anchor = fmtCoord(x+7), "start"
		}
		if y-8 < c.top+10 {
			l.Y = fmtCoord(y + 16)
		} else {
			l.Y = fmtCoord(y - 8)
		}
		c.Last = &l
		break
	}

	if !now.IsZero() {
		c.NowX = fmtCoord(c.x(now))
	}
	c.XTicks = []tickView{
		{X: fmtCoord(c.left), Y: fmtCoord(c.height - 6), Label: c.xmin.UTC().Format("15:04:05"), Anchor: "start"},
		{X: fmtCoord(c.left + c.plotW), Y: fmtCoord(c.height - 6), Label: "+" + shortDuration(c.xmax.Sub(c.xmin)), Anchor: "end"},
	}
	switch {
	case len(ms) == 0:
		c.Empty = "no measurement yet"
	case nvals == 0:
		c.Empty = "no value in " + strconv.Itoa(len(ms)) + " measurement(s)"
	}
	return c
}

func (c *chartView) x(t time.Time) float64 {
	f := float64(t.Sub(c.xmin)) / float64(c.xmax.Sub(c.xmin))
	return c.left + f*c.plotW
}

func (c *chartView) y(v float64) float64 {
	f := (v - c.ymin) / (c.ymax - c.ymin)
	return c.top + (1-f)*c.plotH
}

// axis makes the value axis: [lo, hi] widened to round tick steps, and
// its ticks.
func (c *chartView) axis(lo, hi float64) {
	if hi == lo {
		pad := abs(lo) * 0.1
		if pad == 0 {
			pad = 1
		}
		lo, hi = lo-pad, hi+pad
	} else {
		pad := (hi - lo) * 0.1
		nlo := lo - pad
		if lo >= 0 && nlo < 0 {
			nlo = 0 // counts and rates: no negative room
		}
		lo, hi = nlo, hi+pad
	}
	step := niceStep((hi - lo) / 4)
	lo = floorTo(lo, step)
	hi = ceilTo(hi, step)
	if hi <= lo {
		hi = lo + step
	}
	decimals := 0
	for s := step; s < 1 && decimals < 10; s *= 10 {
		decimals++
	}
	if step != float64(int64(step)) && decimals == 0 {
		decimals = 1
	}
	c.ymin, c.ymax = lo, hi
	for i := 0; ; i++ {
		v := lo + float64(i)*step
		if v > hi+step/1000 || i > 20 {
			break
		}
		label := strconv.FormatFloat(v, 'f', decimals, 64)
		if abs(v) >= 1e6 {
			label = strconv.FormatFloat(v, 'g', 3, 64)
		}
		y := c.y(v)
		c.YTicks = append(c.YTicks, tickView{X: fmtCoord(c.left - 5), Y: fmtCoord(y), Label: label})
	}
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

// niceStep is the 1, 2, 2.5 or 5 times a power of ten nearest above raw.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := 1.0
	for p*10 <= raw {
		p *= 10
	}
	for p > raw {
		p /= 10
	}
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if p*m >= raw {
			return p * m
		}
	}
	return p * 10
}

func floorTo(v, step float64) float64 {
	n := v / step
	f := float64(int64(n))
	if f > n {
		f--
	}
	return f * step
}

func ceilTo(v, step float64) float64 {
	n := v / step
	f := float64(int64(n))
	if f < n {
		f++
	}
	return f * step
}

// shortDuration is d for an axis label: "8s", "4m30s", "2h".
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return strconv.Itoa(int(d/time.Millisecond)) + "ms"
	case d < time.Minute:
		return strconv.Itoa(int(d.Round(time.Second)/time.Second)) + "s"
	case d < time.Hour:
		d = d.Round(time.Second)
		m, s := int(d/time.Minute), int(d%time.Minute/time.Second)
		if s == 0 {
			return strconv.Itoa(m) + "m"
		}
		return strconv.Itoa(m) + "m" + strconv.Itoa(s) + "s"
	}
	d = d.Round(time.Minute)
	h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
	if m == 0 {
		return strconv.Itoa(h) + "h"
	}
	return strconv.Itoa(h) + "h" + strconv.Itoa(m) + "m"
}

// Rollbacks.
