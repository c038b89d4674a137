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
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// demoEvent is one sample event and what the stand-in API does with it.
type demoEvent struct {
	id, subject, body, what string
}

func demoCmd(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	timeout := fs.Duration("timeout", 60*time.Second, "give up if not every event is accounted for by then")
	keep := fs.Bool("keep", false, "keep running after the table, so /metrics can be looked at (Ctrl-C to stop)")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return exitOK
		}
		return exitUsage
	}
	if err := demo(ctx, e, *timeout, *keep); err != nil {
		fmt.Fprintf(e.stderr, "revoker demo: %v\n", err)
		return exitFailed
	}
	return exitOK
}

func demo(ctx context.Context, e env, timeout time.Duration, keep bool) error {
	dir, err := os.MkdirTemp("", "revoker-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ns, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: -1, StoreDir: filepath.Join(dir, "jetstream")})
	if err != nil {
		return err
	}
	defer ns.Shutdown()

	const token = "demo-token"
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	defer api.Close()
	api.Script("rot03", 503, 503)            // a flaky edge: two 503s, then success
	api.Script("rot05", 429)                 // the account's rate limit: Retry-After: 1 pauses every call
	api.Script("rot06", 404)                 // deleted earlier by someone else
	api.Script("rot07", 400)                 // refused by the API: dead-lettered at once
	api.Script("leak03", 503)                // one 503 on an urgent key
	api.Script("rot09", repeat(503, 100)...) // down for this key: retried, then dead-lettered

	cfg := config.Default()
	cfg.NATSURL = ns.ClientURL()
	cfg.APIToken = token
	cfg.BaseURL = api.URL
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.RetryInitial = 200 * time.Millisecond
	cfg.RetryMaxInterval = time.Second
	cfg.RetryMaxElapsed = 2 * time.Second
	cfg.MaxDeliver = 2
	cfg.LogLevel = "info"

	logPath := filepath.Join(os.TempDir(), "revoker-demo.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	log, err := newLogger(cfg, logFile)
	if err != nil {
		return err
	}

	addrc := make(chan string, 1)
	wctx, stopWorker := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- serve(wctx, cfg, serveOptions{log: log, ready: func(a string) { addrc <- a }})
	}()
	defer func() { stopWorker(); <-served }()
	var metricsAddr string
	select {
	case metricsAddr = <-addrc:
	case err := <-served:
		return fmt.Errorf("worker did not start: %v", err)
	}

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, "http://"+metricsAddr+"/readyz", 15*time.Second); err != nil {
		return err
	}

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
	ev := func(key, reason string) string {
		return fmt.Sprintf(`{"account_id":"demoacct","key_id":%q,"reason":%q,"requested_by":"demo"}`, key, reason)
	}
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
	fmt.Fprintf(e.stdout, "revoker demo: embedded JetStream %s, API stand-in %s\n", ns.ClientURL(), api.URL)
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
		m := nats.NewMsg(de.subject)
		m.Data = []byte(de.body)
		m.Header.Set(jetstream.MsgIDHeader, "demo-"+de.id)
		if _, err := js.PublishMsg(ctx, m); err != nil {
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
			o.Outcome, dash(string(o.Reason)), o.Attempts, status(o.Status), sinceStored(o))
	}
	tw.Flush()

	fmt.Fprintf(e.stdout, "\nall %d events accounted for in %s.\n", len(events), time.Since(start).Round(10*time.Millisecond))
	fmt.Fprintln(e.stdout, overtaken(events, order, urgent))
	fmt.Fprintf(e.stdout, "API calls: %d (%d answered 429)\n", api.Count(), countStatus(api, 429))
	dl, err := queue.ListDeadLetters(ctx, js, cfg.DLQStream, nil, 0)
	if err == nil {
		fmt.Fprintf(e.stdout, "dead letters in %s (replay with `revoker dlq replay`):\n", cfg.DLQStream)
		sort.Slice(dl, func(i, j int) bool { return dl[i].Sequence < dl[j].Sequence })
		for _, r := range dl {
			fmt.Fprintf(e.stdout, "  %-18s %s\n", r.Reason, r.Detail)
		}
	}
	fmt.Fprintf(e.stdout, "metrics: http://%s/metrics  health: /healthz, /readyz  log: %s\n", metricsAddr, logPath)
	if keep {
		fmt.Fprintln(e.stdout, "running until interrupted (Ctrl-C)")
		<-ctx.Done()
	}
	return nil
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

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
