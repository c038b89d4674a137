#!/bin/sh
# compare.sh — BenchmarkDrain of an older commit's revoker beside this
# working tree's, on today's rig, in alternating rounds.
#
#   bench/compare.sh [OLD_COMMIT [ROUNDS]]     (defaults: 361f1b0, 3; take 6 or
#                                               more where a few per cent matter)
#
# The old binary is built from a temporary `git worktree` (removed at the
# end), the new one from the working tree as it is, uncommitted changes
# included; the benchmark is compiled once and run with BENCH_BINARY set to
# each in turn, the order swapped every round (old, new; new, old; ...)
# so that neither build always runs second on a machine whose speed
# drifts. Each round prints the worker's events/s and CPU seconds per
# 1,000 events (its own process, user + system), the floor's events/s
# (the minimal loop, measured in the same round: it shows how loaded the
# machine was) and this process's CPU per 1,000 events while the worker
# drained (JetStream, stand-in, publisher).
# The rig sets only what every revoker since 361f1b0 reads
# (REVOKER_NATS_URL, CLOUDFLARE_API_TOKEN, CLOUDFLARE_BASE_URL,
# REVOKER_HTTP_ADDR, REVOKER_CONCURRENCY, REVOKER_RATE_LIMIT) and the
# stand-in answers every DELETE with 200, so an older worker needs nothing
# newer.
#
# BENCH_DRAIN_EVENTS and BENCH_EXTRA_ENV pass through to the benchmark.
set -eu

old=${1:-361f1b0}
rounds=${2:-3}
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/revoker-compare.XXXXXX")
tree="$tmp/old-tree"

cleanup() {
	git -C "$root" worktree remove --force "$tree" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

git -C "$root" worktree add --quiet --detach "$tree" "$old"
(cd "$tree" && go build -o "$tmp/revoker-old" ./cmd/revoker)
(cd "$root" && go build -o "$tmp/revoker-new" ./cmd/revoker)
(cd "$root" && go test -c -o "$tmp/bench.test" ./bench)

echo "old $(git -C "$root" rev-parse --short "$old"), new: the working tree at $(git -C "$root" rev-parse --short HEAD); $(nproc) cores"
printf '%-6s %-4s %10s %14s %12s %14s\n' round bin events/s cpu-s/1k floor/s rig-cpu-s/1k
results="$tmp/results"
: >"$results"
i=1
while [ "$i" -le "$rounds" ]; do
	order="old new"
	[ $((i % 2)) -eq 0 ] && order="new old"
	for which in $order; do
		out=$(cd "$root/bench" && BENCH_BINARY="$tmp/revoker-$which" "$tmp/bench.test" \
			-test.run '^$' -test.bench '^BenchmarkDrain$' -test.benchtime 1x 2>&1) || {
			echo "$out" >&2
			exit 1
		}
		echo "$out" | awk -v r="$i" -v w="$which" '
			/^BenchmarkDrain/ {
				for (f = 1; f < NF; f++) {
					if ($(f+1) == "events/s") rate = $f
					if ($(f+1) == "floor-events/s") floor = $f
					if ($(f+1) == "worker-cpu-s/1k-events") cpu = $f
				}
			}
			/this process/ { rig = $(NF-4) }
			END { printf "%-6s %-4s %10.0f %14.4f %12.0f %14s\n", r, w, rate, cpu, floor, rig }' | tee -a "$results"
	done
	i=$((i + 1))
done

# Medians and the ratios new/old.
awk '
	{ rate[$2] = rate[$2] " " $3; cpu[$2] = cpu[$2] " " $4 }
	function median(list,   a, n, i, j, t) {
		n = split(list, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	# The pair of each round is also compared on its own: the speed of the machine
	# drifts by a third within minutes, and a pair run back to back shares
	# the speed of the moment.
	{ r[$1, $2] = $3; c[$1, $2] = $4; if ($1 > last) last = $1 }
	END {
		for (i = 1; i <= last; i++) if (r[i, "old"] > 0 && r[i, "new"] > 0) {
			pr = pr " " r[i, "new"] / r[i, "old"]; pc = pc " " c[i, "new"] / c[i, "old"]; pairs++
		}
		ro = median(rate["old"]); rn = median(rate["new"]); co = median(cpu["old"]); cn = median(cpu["new"])
		printf "median old %.0f events/s, %.4f s CPU/1k; new %.0f events/s, %.4f s CPU/1k; new/old: %.2fx events/s, %.2fx CPU per event\n", ro, co, rn, cn, rn / ro, cn / co
		printf "pairs: median of the %d per-round ratios: %.2fx events/s, %.2fx CPU per event\n", pairs, median(pr), median(pc)
	}' "$results"
