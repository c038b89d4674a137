package routing

import "testing"

// TestBudgetRate: budgets are cut in one proportion so that together they
// stay under the address limit; one with no limit of its own counts at the
// whole limit.
func TestBudgetRate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rate, ip float64
		all      map[string]float64
		want     float64
	}{
		{"under the limit: unchanged", 4, 150, map[string]float64{"a": 4, "b": 4}, 4},
		{"no address limit", 0, 0, map[string]float64{"a": 0}, 0},
		{"two of 5 under 8: 4 each", 5, 8, map[string]float64{"a": 5, "b": 5}, 4},
		{"no limit of its own: the address limit", 0, 150, map[string]float64{"a": 0}, 150},
		{"no limit beside another: a share", 0, 150, map[string]float64{"a": 0, "b": 50}, 112.5},
		{"single credential above the limit", 400, 150, map[string]float64{"": 400}, 150},
	} {
		if got := Rate(tc.rate, tc.all, tc.ip); got != tc.want {
			t.Errorf("%s: Rate(%v, %v, %v) = %v, want %v", tc.name, tc.rate, tc.all, tc.ip, got, tc.want)
		}
	}
}
