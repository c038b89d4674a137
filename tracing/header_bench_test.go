package tracing_test

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/revoker/revoker/tracing"
)

// BenchmarkHeaderGetterManyValues: N distinct tracestate header
// values (a NATS message of the work stream may carry ~128 KiB of
// headers). The cost should grow linearly with N (SPEC §10).
func BenchmarkHeaderGetterManyValues(b *testing.B) {
	for _, n := range []int{500, 1000, 2000, 4000, 8000} {
		h := map[string][]string{}
		for i := range n {
			h["tracestate"] = append(h["tracestate"], "k="+strconv.Itoa(i))
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			get := tracing.HeaderGetter(h)
			for b.Loop() {
				_ = get("tracestate")
			}
		})
	}
}
