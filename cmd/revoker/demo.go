package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/demo"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
)

func demoCmd(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 60*time.Second, "give up if not every event is accounted for by then")
	keep := fs.Bool("keep", false, "after the table, keep everything running until interrupted, so /metrics can be looked at")
	serveMode := fs.Bool("serve", false, "instead of the table, publish a steady trickle of sample events until interrupted, "+
		"serving /metrics on REVOKER_HTTP_ADDR and JetStream on REVOKER_NATS_URL's address, logging to stderr")
	// Flags only for what the demo may read: its help lists nothing else.
	loader, code := parseFlags(fs, config.NATS|config.Server|config.Logging, args, e,
		"REVOKER_NATS_URL", "REVOKER_HTTP_ADDR", "REVOKER_LOG_LEVEL", "REVOKER_LOG_FORMAT")
	if code >= 0 {
		return code
	}
	// The table's run picks free loopback ports and logs to a file; only
	// --serve uses the NATS URL and the HTTP address. Nothing else is
	// read: a shell set up for a real fleet runs the demo as well.
	used := []string{"REVOKER_LOG_LEVEL", "REVOKER_LOG_FORMAT"}
	if *serveMode {
		used = append(used, "REVOKER_NATS_URL", "REVOKER_HTTP_ADDR")
	}
	if err := loader.Keep(used...); err != nil {
		fmt.Fprintf(e.stderr, "revoker demo: %v (only --serve uses --nats-url and --http-addr; --log-level and --log-format always)\n", err)
		return exitUsage
	}
	cfg, code := load(fs, loader, e)
	if code >= 0 {
		return code
	}
	switch {
	case *timeout <= 0:
		fmt.Fprintf(e.stderr, "revoker demo: --timeout must be positive, got %s\n", *timeout)
		return exitUsage
	case *keep && *serveMode:
		fmt.Fprintln(e.stderr, "revoker demo: --keep is for the table; --serve runs until interrupted anyway")
		return exitUsage
	}
	fail := func(err error) int {
		fmt.Fprintf(e.stderr, "revoker demo: %v\n", err)
		return exitFailed
	}

	// Traces (SPEC §13) as serve exports them, when the OTEL variables say
	// where. First, so that a bad setting leaves no log file behind.
	log := zap.NewNop()
	stopTracing, err := tracing.Setup(ctx, "revoker", version)
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker demo: %v\n", err)
		return exitUsage
	}
	var logFile *os.File
	// Last of all: the spans still queued, then the log they may add to.
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			log.Warn("traces not all exported at shutdown", zap.Error(err))
		}
		_ = log.Sync() // stderr cannot be synced on every system
		if logFile != nil {
			logFile.Close()
		}
	}()

	// The table's log goes to a file, so that the table stays readable (the
	// trickle's goes to stderr). A new one each run, readable by this user
	// only: a fixed name in a shared directory could be a link planted by
	// another user, and the log holds what the API answered.
	logTo, logPath := e.stderr, ""
	if !*serveMode {
		if logFile, err = os.CreateTemp("", "revoker-demo-*.log"); err != nil {
			return fail(err)
		}
		logTo, logPath = logFile, logFile.Name()
	}
	log, err = newLogger(cfg, logTo)
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker demo: %s: %v\n", settingName(fs, "REVOKER_LOG_LEVEL"), err)
		return exitUsage
	}

	// The demo runs serve's own wiring, so it shows the real worker.
	dc := demo.Config{Log: log, Serve: func(ctx context.Context, cfg config.Config, ready func(string)) error {
		return serve(ctx, cfg, serveOptions{log: log, ready: ready})
	}}
	if *serveMode {
		// JetStream listens where the NATS URL points, so that the other
		// commands (publish, outcomes, dlq) reach it with the same settings.
		dc.NATSURL, dc.HTTPAddr = cfg.NATSURL, cfg.HTTPAddr
	}
	st, err := demo.Start(ctx, dc)
	if err != nil {
		return fail(err)
	}
	defer st.Close()
	fmt.Fprintf(e.stdout, "revoker demo: embedded JetStream %s, API stand-in %s\n", st.NATSURL(), st.APIURL())
	printDemoAccounts(e.stdout, st.WorkerConfig().CredentialsFile)

	if *serveMode {
		fmt.Fprintf(e.stdout, "metrics: http://%s/metrics  health: /healthz, /readyz\n", st.MetricsAddr())
		fmt.Fprintf(e.stdout, "publishing a sample event every %v (every outcome, some urgent) until interrupted\n", demo.TrickleEvery)
		err := st.Trickle(ctx, 0, 0, func(p demo.Progress) {
			fmt.Fprintf(e.stdout, "%s published %d; outcomes: revoked %d, not_found %d, dead_lettered %d\n",
				time.Now().Format(time.TimeOnly), p.Published, p.Outcomes[event.Revoked],
				p.Outcomes[event.NotFound], p.Outcomes[event.DeadLettered])
		})
		if err != nil {
			return fail(err)
		}
		return exitOK
	}

	samples := demo.Samples()
	nUrgent := 0
	for _, sm := range samples {
		if sm.Urgent {
			nUrgent++
		}
	}
	fmt.Fprintf(e.stdout, "publishing %d events: the scheduled ones first, then %d urgent ones\n\n", len(samples), nUrgent)
	rep, err := st.Run(ctx, samples, *timeout)
	if err != nil {
		return fail(fmt.Errorf("%w; log: %s", err, logPath))
	}
	printDemoReport(e.stdout, rep)
	fmt.Fprintf(e.stdout, "metrics: http://%s/metrics  health: /healthz, /readyz  log: %s\n", st.MetricsAddr(), logPath)
	if *keep {
		fmt.Fprintln(e.stdout, "running until interrupted (Ctrl-C)")
		if err := st.Wait(ctx); err != nil {
			return fail(err)
		}
	}
	return exitOK
}

// printDemoAccounts says which account each credential of the demo's
// credentials file serves, and which account none does.
func printDemoAccounts(w io.Writer, credentialsFile string) {
	fmt.Fprintf(w, "credentials file %s (removed at exit): one account API token each, each its own budget of %d calls/s (%v lockout past it)\n",
		credentialsFile, demo.Rate, demo.Lockout)
	for _, a := range demo.Accounts() {
		fmt.Fprintf(w, "  account %-10s credential %s\n", a.ID, a.Credential)
	}
	fmt.Fprintf(w, "  account %-10s none: its events are dead-lettered (account_not_allowed) with no call\n", demo.Unserved)
}

// printDemoReport prints what became of each sample, in the order their
// outcomes arrived, and the totals.
func printDemoReport(w io.Writer, rep *demo.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tEVENT\tACCOUNT\tCREDENTIAL\tSUBJECT\tSTAND-IN DOES\tOUTCOME\tREASON\tATTEMPTS\tSTATUS\tTIME-TO-OUTCOME")
	for i, r := range rep.Results {
		o := r.Record
		took := "-"
		if d, ok := r.TimeToOutcome(); ok {
			took = d.Round(time.Millisecond).String()
		}
		status := "-"
		if o.Status != 0 {
			status = fmt.Sprint(o.Status)
		}
		// The credential is the record's: the one the worker called with.
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", i+1, r.ID, cell(r.Account), cell(o.Credential), r.Subject, r.What,
			cell(string(o.Outcome)), cell(string(o.Reason)), o.Attempts, status, took)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nall %d events accounted for in %s.\n", len(rep.Results), rep.Elapsed.Round(10*time.Millisecond))
	fmt.Fprintf(w, "priority: %d scheduled events published before the urgent ones finished after the last urgent one.\n", rep.Overtaken)
	fmt.Fprintf(w, "API calls: %d (%d answered 429), by budget:\n", rep.APICalls, rep.RateLimited)
	for _, b := range rep.Budgets {
		name, by := b.Budget, "token "+strings.Join(b.Credentials, ", ")
		if name == "" {
			name, by = "(none)", "no known credential"
		}
		fmt.Fprintf(w, "  %-8s %3d calls (deletes %d, key lists %d, token checks %d), %d answered 429; all with %s\n",
			cell(name), b.Calls, b.Deletes, b.Lists, b.Checks, b.RateLimited, cell(by))
	}
	if rep.DeadLettersErr != nil {
		fmt.Fprintf(w, "dead letters in %s not read: %s\n", rep.DeadLetterStream, cell(rep.DeadLettersErr.Error()))
		return
	}
	fmt.Fprintf(w, "dead letters in %s (replay with `revoker dlq replay`):\n", rep.DeadLetterStream)
	for _, r := range rep.DeadLetters {
		// The detail holds what the API answered: one safe line.
		fmt.Fprintf(w, "  %-20s %s\n", cell(r.Reason), untrusted.Line(r.Detail, 1024))
	}
}
