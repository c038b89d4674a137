// Package e2e runs the built `revoker serve` binary, as its own process,
// against a three-node JetStream cluster and the Cloudflare stand-in, both
// inside the test process, and breaks the cluster under it: a node killed,
// every node restarted in turn, a worker killed while it holds events.
//
// These tests take a while; -short skips them (and the build).
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// binary is the revoker built for these tests.
var binary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "revoker-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "revoker")
	if !isShort() {
		build := exec.Command("go", "build", "-o", binary, "../cmd/revoker")
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build revoker:", err)
			return 1
		}
	}
	return m.Run()
}

// isShort reads -test.short before flag parsing: TestMain builds the binary
// only when the tests will run.
func isShort() bool {
	for _, a := range os.Args[1:] {
		if a == "-test.short" || a == "-test.short=true" {
			return true
		}
	}
	return false
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end cluster test")
	}
}

// token is what the stand-in accepts and the workers send.
const token = "e2e-token"

// account is the account of every event.
const account = "e2eacct"

// fastEnv keeps retries and takeovers within a test's patience.
var fastEnv = []string{
	"CLOUDFLARE_API_TOKEN=" + token,
	"REVOKER_STREAM_REPLICAS=3",
	"REVOKER_ACK_WAIT=5s",
	"REVOKER_RETRY_INITIAL=200ms",
	"REVOKER_RETRY_MAX_INTERVAL=2s",
	"REVOKER_RETRY_MAX_ELAPSED=20s",
	"REVOKER_SHUTDOWN_TIMEOUT=3s",
	"REVOKER_LOG_LEVEL=info",
}

// worker is a running `revoker serve`.
type worker struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	addr string
	log  string
	done chan struct{}
}

// startWorker runs the binary against natsURL (a server list) and the
// stand-in, with extra settings last so they win.
func startWorker(t *testing.T, name, natsURL string, api *cloudflaretest.Server, extra ...string) *worker {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cmd := exec.Command(binary, "serve")
	cmd.Env = append(os.Environ(), fastEnv...)
	cmd.Env = append(cmd.Env,
		"REVOKER_NATS_URL="+natsURL,
		"CLOUDFLARE_BASE_URL="+api.URL,
		"REVOKER_HTTP_ADDR="+addr,
	)
	cmd.Env = append(cmd.Env, extra...)
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &worker{t: t, name: name, cmd: cmd, addr: addr, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(w.done)
	}()
	t.Cleanup(func() {
		w.stop()
		if t.Failed() || os.Getenv("E2E_SHOW_LOGS") != "" {
			w.dumpLog(60)
		}
	})
	return w
}

// stop sends SIGTERM and waits for the exit (SIGKILL after a while).
func (w *worker) stop() {
	select {
	case <-w.done:
		return
	default:
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(20 * time.Second):
		w.kill()
	}
}

// kill ends the process at once, as a crash or an OOM kill does.
func (w *worker) kill() {
	_ = w.cmd.Process.Kill()
	<-w.done
}

func (w *worker) dumpLog(lines int) {
	f, err := os.Open(w.log)
	if err != nil {
		return
	}
	defer f.Close()
	var all []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		all = append(all, sc.Text())
	}
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	w.t.Logf("last %d log lines of %s:\n%s", len(all), w.name, strings.Join(all, "\n"))
}

// logContains reports whether the worker has logged s.
func (w *worker) logContains(s string) bool {
	b, err := os.ReadFile(w.log)
	return err == nil && strings.Contains(string(b), s)
}

// ready reports whether /readyz answers 200.
func (w *worker) ready() bool {
	resp, err := http.Get("http://" + w.addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (w *worker) waitReady(within time.Duration) {
	w.t.Helper()
	waitUntil(w.t, within, w.name+" ready", w.ready)
}

// metric sums the samples of the metric name whose labels contain every
// one of labels (such as `outcome="revoked"`); -1 when /metrics cannot be
// read, 0 when no series matches (see sample to tell them apart).
func (w *worker) metric(name string, labels ...string) float64 {
	v, _, err := w.read(name, labels...)
	if err != nil {
		return -1
	}
	return v
}

// publisher publishes events to the cluster, riding out node loss: each
// event is retried under the same Nats-Msg-Id until the stream takes it.
type publisher struct {
	t  *testing.T
	js jetstream.JetStream
}

func newPublisher(t *testing.T, urls string) *publisher {
	t.Helper()
	_, js := queuetest.ConnectURL(t, urls)
	return &publisher{t: t, js: js}
}

// publish publishes one event for key on subject; it reports failure
// rather than failing the test, so it may run in a goroutine.
func (p *publisher) publish(subject, key string) error {
	body := []byte(`{"account_id":"` + account + `","key_id":"` + key + `","requested_by":"e2e"}`)
	deadline := time.Now().Add(45 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := p.js.Publish(ctx, subject, body, jetstream.WithMsgID("e2e:"+key))
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("publish %s: %w", key, err)
		}
		time.Sleep(100 * time.Millisecond) // a pause between attempts, not a synchronisation
	}
}

func (p *publisher) publishAll(subject string, keys []string) {
	p.t.Helper()
	for _, k := range keys {
		if err := p.publish(subject, k); err != nil {
			p.t.Fatal(err)
		}
	}
}

func keys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%05d", prefix, i)
	}
	return out
}

// lost are the keys the stand-in never saw deleted.
func lost(api *cloudflaretest.Server, ks []string) []string {
	var out []string
	for _, k := range ks {
		if !api.Deleted(account, k) {
			out = append(out, k)
		}
	}
	return out
}

// waitAllDeleted waits until the stand-in has deleted every key, failing
// with the keys it has not.
func waitAllDeleted(t *testing.T, api *cloudflaretest.Server, ks []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		l := lost(api, ks)
		if len(l) == 0 {
			return
		}
		if time.Now().After(deadline) {
			show := l
			if len(show) > 10 {
				show = show[:10]
			}
			t.Fatalf("lost %d of %d events: the stand-in never deleted %v", len(l), len(ks), show)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition
	}
}

// recordOutcomes checks, once every event is settled, that each has exactly
// one outcome record, reading every record, and logs the figures.
func recordOutcomes(t *testing.T, js jetstream.JetStream, ks []string) {
	t.Helper()
	// An event's record is stored before it leaves the work stream: wait
	// for them all to leave before counting.
	waitSettled(t, js, len(ks), 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, "REVOCATION_OUTCOMES")
	if err != nil {
		t.Logf("outcome records: stream not readable: %v", err)
		return
	}
	total := s.CachedInfo().State.Msgs
	perKey := map[string]int{}
	outcomes := map[string]int{}
	// Right after a node's restart a fetch can come back empty while the
	// stream's leader settles: read on from the last record, with a new
	// consumer, until every stored record is read.
	var read, last uint64 // records read; the stream sequence of the last
	readOn := func() bool {
		cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: last + 1,
		})
		if err != nil {
			t.Logf("outcome records: after %d of %d: %v", read, total, err)
			return false
		}
		for read < total {
			batch, err := cons.Fetch(int(min(total-read, 500)), jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Logf("outcome records: after %d of %d: %v", read, total, err)
				return false
			}
			n := 0
			for m := range batch.Messages() {
				n++
				if meta, err := m.Metadata(); err == nil {
					last = meta.Sequence.Stream
				}
				var rec struct{ KeyID, Outcome string }
				if json.Unmarshal(m.Data(), &struct {
					KeyID   *string `json:"key_id"`
					Outcome *string `json:"outcome"`
				}{&rec.KeyID, &rec.Outcome}) == nil {
					perKey[rec.KeyID]++
					outcomes[rec.Outcome]++
				}
			}
			if n == 0 {
				t.Logf("outcome records: a read came back empty after %d of %d; reading on", read, total)
				return false
			}
			read += uint64(n)
		}
		return true
	}
	waitUntil(t, 30*time.Second, "every outcome record read", readOn)
	missing, doubled := 0, 0
	for _, k := range ks {
		switch perKey[k] {
		case 0:
			missing++
		case 1:
		default:
			doubled++
		}
	}
	t.Logf("outcome records: %d stored, %d read, for %d events; %d events without one, %d with more than one; by outcome %v",
		total, read, len(ks), missing, doubled, outcomes)
	if missing > 0 || doubled > 0 {
		t.Errorf("every event must have exactly one outcome record")
	}
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	queuetest.Eventually(t, within, what, cond)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
