package stats

import "math"

// LookAlpha is the level at which look k (1-based) of K planned looks is
// tested so that the chance of any false failure over the K looks is at
// most alpha: the increment of the Pocock-type spending function
// alpha ln(1 + (e-1) k/K) (see the package documentation). A look outside
// 1..K gets 0: it may pass, never fail.
func LookAlpha(alpha float64, look, looks int) float64 {
	if look < 1 || look > looks || !(alpha > 0) {
		return 0
	}
	return spent(alpha, look, looks) - spent(alpha, look-1, looks)
}

func spent(alpha float64, k, looks int) float64 {
	if k >= looks {
		return alpha
	}
	return alpha * math.Log1p((math.E-1)*float64(k)/float64(looks))
}
