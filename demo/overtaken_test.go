package demo

import "testing"

func TestDemoOvertaken(t *testing.T) {
	r := func(urgent ...bool) []Result {
		var out []Result
		for _, u := range urgent {
			out = append(out, Result{Sample: Sample{Urgent: u}})
		}
		return out
	}
	const U, S = true, false
	for _, tc := range []struct {
		name    string
		results []Result
		want    int
	}{
		{"none", nil, 0},
		{"no urgent ones", r(S, S, S), 3},
		{"urgent last", r(S, S, U), 0},
		{"urgent first", r(U, U, S, S), 2},
		{"mixed", r(S, U, S, U, S, S, S), 3},
	} {
		if got := overtaken(tc.results); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}
