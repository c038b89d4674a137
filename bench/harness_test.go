// Package bench measures revoker end to end: the real binary as its own
// process, an embedded JetStream and the API stand-in in this one. Run:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/
package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// binary is the `revoker` the benchmarks run: built from this tree, or
// the one BENCH_BINARY names, so that another commit's build can be
// measured on today's rig (bench/compare.sh).
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "revoker-bench-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "revoker")
	code := 0
	if b := os.Getenv("BENCH_BINARY"); b != "" {
		if binary, err = filepath.Abs(b); err != nil {
			panic(err)
		}
	} else if wantsBench() {
		build := exec.Command("go", "build", "-o", binary, "../cmd/revoker")
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			panic(err)
		}
	}
	code = m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// wantsBench avoids building the binary when only the tests run.
func wantsBench() bool {
	for _, a := range os.Args {
		if strings.HasPrefix(a, "-test.bench") {
			return true
		}
	}
	return false
}

// rig is a JetStream server and an API stand-in in this process.
type rig struct {
	b   *testing.B
	srv *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	api *cloudflaretest.Server
}

func newRig(b *testing.B, apiOpts ...cloudflaretest.Option) *rig {
	b.Helper()
	srv, nc, js := queuetest.JetStream(b)
	api := cloudflaretest.NewServer(apiOpts...)
	b.Cleanup(api.Close)
	return &rig{b: b, srv: srv, nc: nc, js: js, api: api}
}

// proc is a running `revoker serve`.
type proc struct {
	cmd  *exec.Cmd
	addr string
}

// startWorker runs the binary against the rig with extra settings.
func (r *rig) startWorker(vars ...string) *proc {
	r.b.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(r.b))
	cmd := exec.Command(binary, "serve")
	cmd.Env = append(os.Environ(),
		"REVOKER_NATS_URL="+r.srv.ClientURL(),
		"CLOUDFLARE_API_TOKEN=bench-token",
		"CLOUDFLARE_BASE_URL="+r.api.URL,
		"REVOKER_HTTP_ADDR="+addr,
	)
	cmd.Env = append(cmd.Env, vars...)
	logf, err := os.Create(filepath.Join(r.b.TempDir(), "worker.log"))
	if err != nil {
		r.b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf // production logging, one line per event, is part of the cost
	if err := cmd.Start(); err != nil {
		r.b.Fatal(err)
	}
	p := &proc{cmd: cmd, addr: addr}
	r.b.Cleanup(func() { p.stop(); logf.Close() })
	queuetest.Eventually(r.b, 30*time.Second, "worker ready", func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

// peakRSS is the process's high-water resident set, in MiB.
func (p *proc) peakRSS() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return float64(kb) / 1024
		}
	}
	return -1
}

// cpuSeconds is the CPU time (user + system) the process has used.
func (p *proc) cpuSeconds() float64 { return cpuOf(p.cmd.Process.Pid) }

// cpuOf is the CPU time (user + system) process pid has used.
func cpuOf(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

func (p *proc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// publishAsync publishes one event per key on subject and returns when the
// stream has acknowledged them all, with each key's publish time.
func (r *rig) publishAsync(subject string, keys []string) map[string]time.Time {
	r.b.Helper()
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		r.b.Fatal(err)
	}
	at := make(map[string]time.Time, len(keys))
	for _, k := range keys {
		m := nats.NewMsg(subject)
		m.Data = []byte(`{"account_id":"benchacct","key_id":"` + k + `"}`)
		m.Header.Set(jetstream.MsgIDHeader, k)
		at[k] = time.Now()
		// A loaded machine may hold 4,096 acks back longer than the
		// default 200 ms: wait, as the worker's own writers do.
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			r.b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		r.b.Fatal("publish acks did not arrive")
	}
	return at
}

// waitCalls waits until n keys with prefix have had a 200. The stand-in's
// request count is checked first: scanning its whole log every poll would
// take a core's share away from the processes measured.
func (r *rig) waitCalls(within time.Duration, what, prefix string, n int) {
	r.b.Helper()
	atLeast := 0
	queuetest.Eventually(r.b, within, what, func() bool {
		if r.api.Count() < atLeast {
			return false
		}
		// Counted before the scan: each key missing from it needs one more
		// request at least.
		c := r.api.Count()
		got := len(r.calls(prefix))
		atLeast = c + n - got
		return got == n
	})
}

// calls returns, per key, the arrival of its first 200 at the stand-in.
func (r *rig) calls(prefix string) map[string]time.Time {
	out := map[string]time.Time{}
	for _, q := range r.api.Requests() {
		if strings.HasPrefix(q.KeyID, prefix) && q.Status == 200 {
			if _, seen := out[q.KeyID]; !seen {
				out[q.KeyID] = q.At
			}
		}
	}
	return out
}

func keys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%06d", prefix, i)
	}
	return out
}

// latencies are call time minus publish time for each key, sorted.
func latencies(pub, call map[string]time.Time) []time.Duration {
	var out []time.Duration
	for k, c := range call {
		if p, ok := pub[k]; ok {
			out = append(out, c.Sub(p))
		}
	}
	slices.Sort(out)
	return out
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func cores() string {
	return fmt.Sprintf("%d cores (GOMAXPROCS %d)", runtime.NumCPU(), runtime.GOMAXPROCS(0))
}

func freePort(b testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

func ctxTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
