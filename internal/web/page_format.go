package web

import (
	"strconv"
	"strings"
)

// formatNum formats a measured value for people: up to four significant
// digits, no exponent for everyday sizes.
func formatNum(v float64) string {
	a := v
	if a < 0 {
		a = -a
	}
	switch {
	case a == 0:
		return "0"
	case a >= 1e6 || a < 1e-4:
		return strconv.FormatFloat(v, 'g', 4, 64)
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	s := strconv.FormatFloat(v, 'g', 4, 64)
	if strings.ContainsAny(s, "e") {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return s
}

func outcomeClass(o string) string {
	switch o {
	case "pass":
		return "pass"
	case "fail":
		return "fail"
	case "inconclusive":
		return "inconclusive"
	case "error":
		return "error"
	}
	return "unknown"
}
