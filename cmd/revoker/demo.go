package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/untrusted"
)

// demoEvent is one sample event and what the stand-in API does with it.
type demoEvent struct {
	id, subject, body, what string
}

func demoCmd(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 60*time.Second, "give up if not every event is accounted for by then")
	keep := fs.Bool("keep", false, "after the table, keep everything running until interrupted, so /metrics can be looked at")
	serveMode := fs.Bool("serve", false, "instead of the table, publish a steady trickle of sample events until interrupted, "+
		"serving /metrics on REVOKER_HTTP_ADDR and JetStream on REVOKER_NATS_URL's address, logging to stderr")
	// The table's run picks free loopback ports and logs to a file; only
	// --serve uses the NATS URL and the HTTP address.
	cfg, code := parse(fs, config.NATS|config.Server|config.Logging, args, e)
	if code >= 0 {
		return code
	}
	var err error
	if *serveMode {
		err = demoServe(ctx, e, cfg)
	} else {
		err = demo(ctx, e, cfg, *timeout, *keep)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker demo: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// demoToken is the API token the stand-in accepts and the worker sends.
const demoToken = "demo-token"

// demoStack is the whole system in one process: an embedded JetStream, the
// Cloudflare stand-in and the worker, with a connection for publishing.
type demoStack struct {
	cfg         config.Config
	ns          *server.Server
	api         *cloudflaretest.Server
	nc          *nats.Conn
	js          jetstream.JetStream
	metricsAddr string
	// workerDone is closed when the worker has stopped; workerErr is then
	// why.
	workerDone chan struct{}
	workerErr  error
	closers    []func()
}

// startDemoStack takes the running JetStream ns, starts the stand-in and
// the worker configured by cfg (its NATS URL and API settings are filled in
// here), and waits until the worker is ready. Close it when done.
func startDemoStack(ctx context.Context, ns *server.Server, cfg config.Config, log *zap.Logger) (st *demoStack, err error) {
	s := &demoStack{ns: ns, workerDone: make(chan struct{})}
	s.closers = append(s.closers, ns.Shutdown)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.api = cloudflaretest.NewServer(cloudflaretest.WithToken(demoToken))
	s.closers = append(s.closers, s.api.Close)

	cfg.NATSURL = ns.ClientURL()
	cfg.APIToken = demoToken
	cfg.BaseURL = s.api.URL
	// Short retries, so that every outcome shows within seconds.
	cfg.RetryInitial = 200 * time.Millisecond
	cfg.RetryMaxInterval = time.Second
	cfg.RetryMaxElapsed = 2 * time.Second
	cfg.MaxDeliver = 2
	s.cfg = cfg

	addrc := make(chan string, 1)
	wctx, stopWorker := context.WithCancel(ctx)
	go func() {
		s.workerErr = serve(wctx, cfg, serveOptions{log: log, ready: func(a string) { addrc <- a }})
		close(s.workerDone)
	}()
	// Closers run last first: the worker stops before the stand-in and
	// JetStream go away.
	s.closers = append(s.closers, func() { stopWorker(); <-s.workerDone })
	select {
	case s.metricsAddr = <-addrc:
	case <-s.workerDone:
		return nil, fmt.Errorf("worker did not start: %v", s.workerErr)
	}

	if s.nc, err = nats.Connect(ns.ClientURL()); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.nc.Close)
	if s.js, err = jetstream.New(s.nc); err != nil {
		return nil, err
	}
	if err := waitReady(ctx, "http://"+s.metricsAddr+"/readyz", 15*time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

// Close stops the worker, then the stand-in and JetStream.
func (s *demoStack) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// publish stores one event on subject with the given message id.
func (s *demoStack) publish(ctx context.Context, subject, id, body string) error {
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	m.Header.Set(jetstream.MsgIDHeader, id)
	_, err := s.js.PublishMsg(ctx, m)
	return err
}

// demoEventBody is a well-formed sample event for key.
func demoEventBody(key, reason string) string {
	return fmt.Sprintf(`{"account_id":"demoacct","key_id":%q,"reason":%q,"requested_by":"demo"}`, key, reason)
}

func demo(ctx context.Context, e env, settings config.Config, timeout time.Duration, keep bool) error {
	dir, err := os.MkdirTemp("", "revoker-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ns, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: -1, StoreDir: filepath.Join(dir, "jetstream")})
	if err != nil {
		return err
	}

	cfg := config.Default()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.LogLevel, cfg.LogFormat = settings.LogLevel, settings.LogFormat

	// The log goes to a file, so that the table stays readable. A new one
	// each run, readable by this user only: a fixed name in a shared
	// directory could be a link planted by another user, and the log
	// holds what the API answered.
	logFile, err := os.CreateTemp("", "revoker-demo-*.log")
	if err != nil {
		ns.Shutdown()
		return err
	}
	defer logFile.Close()
	logPath := logFile.Name()
	log, err := newLogger(cfg, logFile)
	if err != nil {
		ns.Shutdown()
		return err
	}

	s, err := startDemoStack(ctx, ns, cfg, log)
	if err != nil {
		return err
	}
	defer s.Close()
	cfg, api, nc, metricsAddr := s.cfg, s.api, s.nc, s.metricsAddr
	api.Script("rot03", 503, 503)            // a flaky edge: two 503s, then success
	api.Script("rot05", 429)                 // the account's rate limit: Retry-After: 1 pauses every call
	api.Script("rot06", 404)                 // deleted earlier by someone else
	api.Script("rot07", 400)                 // refused by the API: dead-lettered at once
	api.Script("leak03", 503)                // one 503 on an urgent key
	api.Script("rot09", repeat(503, 100)...) // down for this key: retried, then dead-lettered

	// Listen for outcomes before publishing, so none can be missed.
	outcomes := make(chan event.Record, 64)
	sub, err := nc.Subscribe(cfg.OutcomeSubject+".>", func(m *nats.Msg) {
		var o event.Record
		if json.Unmarshal(m.Data, &o) == nil {
			outcomes <- o
		}
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()

	sched, urgent := cfg.LowestPriority(), cfg.HighestPriority()
	ev := demoEventBody
	events := []demoEvent{
		{"rot01", sched, ev("rot01", "rotation"), "success"},
		{"rot02", sched, ev("rot02", "rotation"), "success"},
		{"rot03", sched, ev("rot03", "rotation"), "two 503s, then success"},
		{"rot04", sched, ev("rot04", "rotation"), "success"},
		{"rot05", sched, ev("rot05", "rotation"), "429 Retry-After: 1 (pauses every call)"},
		{"rot06", sched, ev("rot06", "rotation"), "already deleted (404)"},
		{"rot07", sched, ev("rot07", "rotation"), "400: refused by the API"},
		{"rot08", sched, `{"account_id":"demoacct","key_id":"../../etc"}`, "invalid key id"},
		{"rot09", sched, ev("rot09", "rotation"), "503 on every call"},
		{"bad01", sched, `revoke demoacct rot10 please`, "not JSON"},
		{"leak01", urgent, ev("leak01", "leaked in a public repo"), "urgent, success"},
		{"leak02", urgent, ev("leak02", "leaked in a public repo"), "urgent, success"},
		{"leak03", urgent, ev("leak03", "leaked in a public repo"), "urgent, one 503"},
	}
	fmt.Fprintf(e.stdout, "revoker demo: embedded JetStream %s, API stand-in %s\n", s.ns.ClientURL(), api.URL)
	nUrgent := 0
	for _, de := range events {
		if de.subject == urgent {
			nUrgent++
		}
	}
	fmt.Fprintf(e.stdout, "publishing %d events: the scheduled ones first, then %d urgent ones (rate limit %g calls/s)\n\n",
		len(events), nUrgent, cfg.RateLimit)
	start := time.Now()
	for _, de := range events {
		if err := s.publish(ctx, de.subject, "demo-"+de.id, de.body); err != nil {
			return fmt.Errorf("publish %s: %w", de.id, err)
		}
	}

	got := map[string]event.Record{}
	var order []string
	deadline := time.After(timeout)
	for len(got) < len(events) {
		select {
		case o := <-outcomes:
			id := strings.TrimPrefix(o.EventID, "demo-")
			if _, dup := got[id]; !dup {
				order = append(order, id)
			}
			got[id] = o
		case <-deadline:
			return fmt.Errorf("only %d of %d events accounted for after %v; log: %s", len(got), len(events), timeout, logPath)
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	byID := map[string]demoEvent{}
	for _, de := range events {
		byID[de.id] = de
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tEVENT\tSUBJECT\tSTAND-IN DOES\tOUTCOME\tREASON\tATTEMPTS\tSTATUS\tTIME-TO-OUTCOME")
	for i, id := range order {
		o, de := got[id], byID[id]
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", i+1, id, de.subject, de.what,
			cell(string(o.Outcome)), cell(string(o.Reason)), o.Attempts, status(o.Status), sinceStored(o))
	}
	tw.Flush()

	fmt.Fprintf(e.stdout, "\nall %d events accounted for in %s.\n", len(events), time.Since(start).Round(10*time.Millisecond))
	fmt.Fprintln(e.stdout, overtaken(events, order, urgent))
	fmt.Fprintf(e.stdout, "API calls: %d (%d answered 429)\n", api.Count(), countStatus(api, 429))
	dl, err := queue.ListDeadLetters(ctx, s.js, cfg.DLQStream, nil, 0)
	if err == nil {
		fmt.Fprintf(e.stdout, "dead letters in %s (replay with `revoker dlq replay`):\n", cfg.DLQStream)
		sort.Slice(dl, func(i, j int) bool { return dl[i].Sequence < dl[j].Sequence })
		for _, r := range dl {
			// The detail holds what the API answered: one safe line.
			fmt.Fprintf(e.stdout, "  %-18s %s\n", cell(r.Reason), untrusted.Line(r.Detail, 1024))
		}
	}
	fmt.Fprintf(e.stdout, "metrics: http://%s/metrics  health: /healthz, /readyz  log: %s\n", metricsAddr, logPath)
	if keep {
		fmt.Fprintln(e.stdout, "running until interrupted (Ctrl-C)")
		select {
		case <-ctx.Done():
		case <-s.workerDone:
			return fmt.Errorf("worker stopped: %v", s.workerErr)
		}
	}
	return nil
}

// trickleKind is one kind of event in demo --serve's steady trickle: what
// the stand-in does with it and which outcome it earns.
type trickleKind struct {
	urgent bool
	script []int                   // the stand-in's answers for the event's key
	body   func(key string) string // nil: a well-formed event for key
}

// trickle is one cycle of demo --serve's events, published one every
// trickleEvery: every outcome (revoked, not_found, requeued, dead_lettered
// for invalid_event, api_rejected and retries_exhausted), urgent work, a
// 429 that pauses every call for a second. About 3 API calls a second in
// all, under the default rate limit of 4, so nothing backs up; the key that
// never succeeds answers 408 rather than 5xx, so the API-error alert stays
// quiet while retries, requeues and dead letters still show.
var trickle = func() []trickleKind {
	c := make([]trickleKind, 40)
	for i := range c {
		c[i].urgent = i%5 == 0
	}
	c[3].script = []int{404}                                             // deleted earlier by someone else
	c[11].script = []int{503, 503}                                       // a flaky edge
	c[17].script = []int{429}                                            // the account's limit: Retry-After: 1
	c[23].script = []int{400}                                            // refused: dead-lettered at once
	c[29].body = func(string) string { return "revoke demoacct please" } // not JSON
	c[33].body = func(string) string { return `{"account_id":"demoacct","key_id":"../../etc"}` }
	c[37].script = repeat(408, 100) // never succeeds: requeued, then dead-lettered
	return c
}()

const (
	trickleEvery  = 400 * time.Millisecond
	trickleReport = 10 * time.Second
)

// demoServe runs the demo's stack until ctx ends, publishing the trickle:
// a local system with live metrics and no Cloudflare account.
func demoServe(ctx context.Context, e env, settings config.Config) error {
	dir, err := os.MkdirTemp("", "revoker-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log, err := newLogger(settings, e.stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // stderr cannot be synced on every system

	// JetStream listens where the NATS URL points, so that the other
	// commands (publish, outcomes, dlq) reach it with the same settings.
	ns, err := queue.RunEmbedded(filepath.Join(dir, "jetstream"), settings.NATSURL)
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.HTTPAddr = settings.HTTPAddr
	cfg.LogLevel, cfg.LogFormat = settings.LogLevel, settings.LogFormat
	s, err := startDemoStack(ctx, ns, cfg, log)
	if err != nil {
		return err
	}
	defer s.Close()

	var mu sync.Mutex
	counts := map[event.Outcome]int{}
	sub, err := s.nc.Subscribe(s.cfg.OutcomeSubject+".>", func(m *nats.Msg) {
		var o event.Record
		if json.Unmarshal(m.Data, &o) == nil {
			mu.Lock()
			counts[o.Outcome]++
			mu.Unlock()
		}
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe() //nolint:errcheck // the connection closes next

	fmt.Fprintf(e.stdout, "revoker demo: embedded JetStream %s, API stand-in %s\n", ns.ClientURL(), s.api.URL)
	fmt.Fprintf(e.stdout, "metrics: http://%s/metrics  health: /healthz, /readyz\n", s.metricsAddr)
	fmt.Fprintf(e.stdout, "publishing a sample event every %v (every outcome, some urgent) until interrupted\n", trickleEvery)

	sched, urgent := s.cfg.LowestPriority(), s.cfg.HighestPriority()
	tick := time.NewTicker(trickleEvery)
	defer tick.Stop()
	report := time.NewTicker(trickleReport)
	defer report.Stop()
	published, failed := 0, 0
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return nil // interrupted: the deferred Close shuts the worker down gracefully
		case <-s.workerDone:
			return fmt.Errorf("worker stopped: %v", s.workerErr)
		case <-report.C:
			mu.Lock()
			fmt.Fprintf(e.stdout, "%s published %d; outcomes: revoked %d, not_found %d, dead_lettered %d\n",
				time.Now().Format(time.TimeOnly), published, counts[event.Revoked],
				counts[event.NotFound], counts[event.DeadLettered])
			mu.Unlock()
			continue
		case <-tick.C:
		}
		k := trickle[n%len(trickle)]
		key := fmt.Sprintf("key%07d", n)
		if len(k.script) > 0 {
			s.api.Script(key, k.script...)
		}
		subject, body := sched, demoEventBody(key, "scheduled rotation")
		if k.urgent {
			subject, body = urgent, demoEventBody(key, "leaked")
		}
		if k.body != nil {
			body = k.body(key)
		}
		// Ids unique to this run: a restart begins with an empty store.
		if err := s.publish(ctx, subject, fmt.Sprintf("demo-%d-%d", os.Getpid(), n), body); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if failed++; failed == 1 || failed%100 == 0 {
				log.Warn("demo: publish failed", zap.Int("failures", failed), zap.Error(err))
			}
			continue
		}
		published++
	}
}

// overtaken says how many scheduled events, published before every urgent
// one, finished after the last urgent one: what priority bought.
func overtaken(events []demoEvent, order []string, urgent string) string {
	subject := map[string]string{}
	for _, de := range events {
		subject[de.id] = de.subject
	}
	lastUrgent := -1
	for i, id := range order {
		if subject[id] == urgent {
			lastUrgent = i
		}
	}
	behind := 0
	for _, id := range order[lastUrgent+1:] {
		if subject[id] != urgent {
			behind++
		}
	}
	return fmt.Sprintf("priority: %d scheduled events published before the urgent ones finished after the last urgent one.", behind)
}

func repeat(status, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = status
	}
	return out
}

func countStatus(api *cloudflaretest.Server, status int) int {
	n := 0
	for _, r := range api.Requests() {
		if r.Status == status {
			n++
		}
	}
	return n
}

func status(s int) string {
	if s == 0 {
		return "-"
	}
	return fmt.Sprint(s)
}

// sinceStored is the time from the stream storing the event to its outcome.
func sinceStored(o event.Record) string {
	p, err1 := time.Parse(time.RFC3339Nano, o.PublishedAt)
	c, err2 := time.Parse(time.RFC3339Nano, o.CompletedAt)
	if err1 != nil || err2 != nil {
		return "-"
	}
	return c.Sub(p).Round(time.Millisecond).String()
}

// waitReady polls url until it answers 200.
func waitReady(ctx context.Context, url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker not ready after %v", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
