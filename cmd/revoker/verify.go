package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/routing"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/verify"
)

// verifyCmd proves the audit trail against the API (SPEC §7): it prints
// every key the trail says is gone that its account still lists, and
// nothing else on standard output.
func verifyCmd(ctx context.Context, args []string, e env) int {
	e = lockedEnv(e)
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	account := fs.String("account", "", "only keys of this account `ID`")
	since := fs.Duration("since", verify.Window, "only records of the last `duration`")
	asJSON := fs.Bool("json", false, "print one JSON object per still-listed key")
	cfg, code := parse(fs, config.NATS|config.Outcomes|config.API|config.Rates, args, e)
	if code >= 0 {
		return code
	}
	if *since <= 0 {
		fmt.Fprintf(e.stderr, "revoker verify: --since must be positive, got %s\n", *since)
		return exitUsage
	}
	if *account != "" && !cloudflare.ValidIdentifier(*account) {
		fmt.Fprintf(e.stderr, "revoker verify: --account must be 1-32 characters of [A-Za-z0-9], got %q\n", cell(*account))
		return exitUsage
	}
	if !cfg.OutcomeEnabled() {
		fmt.Fprintf(e.stderr, "revoker verify: %v\n", verify.ErrNoTrail)
		return exitUsage
	}
	// The key lists' client spans (SPEC §13) go where serve's go, when the
	// OTEL variables say where; they are flushed before the exit.
	stopTracing, err := tracing.Setup(ctx, "revoker", version)
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker verify: %v\n", err)
		return exitUsage
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = stopTracing(sctx)
	}()
	var (
		api      verify.Lister
		budgets  map[string]float64 // each budget's rate; "" the single credential's
		budgetOf = func(string) string { return "" }
	)
	if cfg.CredentialsFile != "" {
		// Each account's list with its own credential, as serve calls.
		creds, err := routing.Load(cfg, "revoker/"+version, zap.NewNop())
		if err != nil {
			fmt.Fprintf(e.stderr, "revoker verify: %s: %v\n", settingName(fs, "REVOKER_CREDENTIALS_FILE"), err)
			return exitUsage
		}
		api = creds.Router()
		budgets = creds.Router().Set().Budgets()
		budgetOf = func(account string) string {
			_, budget, _ := creds.Router().CredentialOf(account)
			return budget
		}
	} else {
		cred, err := credential(cfg)
		if err != nil {
			fmt.Fprintf(e.stderr, "revoker verify: %s: %v\n", settingName(fs, "CLOUDFLARE_API_TOKEN_FILE"), err)
			return exitUsage
		}
		client, err := cloudflare.New(cloudflare.Config{
			BaseURL: cfg.BaseURL, Credential: cred, Timeout: cfg.HTTPTimeout,
			UserAgent: "revoker/" + version,
			Transport: tracing.Transport(cloudflare.DefaultTransport()),
		})
		if err != nil {
			fmt.Fprintf(e.stderr, "revoker verify: %s: %v\n", settingName(fs, "CLOUDFLARE_BASE_URL"), err)
			return exitUsage
		}
		api = client
		budgets = map[string]float64{"": cfg.RateLimit}
	}
	c := dialFor("revoker verify", cfg, e)
	if c == nil {
		return exitFailed
	}
	defer c.Close()

	acquire, stop := pacedLists(budgets, budgetOf, cfg.IPRateLimit, cfg.RetryInitial)
	defer stop()
	r, err := verify.Check(ctx, verify.Config{
		JS: c.JetStream(), Stream: cfg.OutcomeStream, Prefix: cfg.OutcomeSubject, API: api, Acquire: acquire,
	}, *account, time.Now().Add(-*since))
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(e.stderr, "revoker verify: interrupted")
		} else {
			fmt.Fprintf(e.stderr, "revoker verify: %v\n", streamError("outcome", cfg.OutcomeStream, err))
		}
		return exitFailed
	}
	printStillListed(e, r.StillListed, *asJSON)
	for _, f := range r.Failed {
		fmt.Fprintf(e.stderr, "revoker verify: account %s: key list not fetched: %s\n", cell(f.AccountID), cell(f.Why))
	}
	for _, s := range r.Strays {
		fmt.Fprintf(e.stderr, "revoker verify: %s\n", strayLine(s))
	}
	if r.Proven() {
		return exitOK
	}
	return exitFailed
}

// printStillListed writes the keys found still listed, one per line:
// account, key, outcome, completed_at, CF-Ray; or one JSON object each.
func printStillListed(e env, keys []verify.Claim, asJSON bool) {
	if asJSON {
		for _, k := range keys {
			printJSON(e.stdout, k)
		}
		return
	}
	if len(keys) == 0 {
		return
	}
	// No header: standard output holds the still-listed keys and nothing
	// else, so a script can count its lines.
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cell(k.AccountID), cell(k.KeyID), cell(k.Says()), cell(k.CompletedAt), cell(k.CFRay))
	}
	tw.Flush()
}

// gateTurn charges each key list of serve's checks to the rate budget and
// the call slots, at the priority given (the lowest: a check never delays
// a revocation); calls counts them. With several credentials, routes
// charges each to its account's budget as well.
func gateTurn(gate *throttle.Gate, priority int, calls prometheus.Counter, routes *routing.Routes, pause time.Duration) func(context.Context, string) (func(*cloudflare.Response), error) {
	if routes != nil {
		return routes.Turn(gate, priority)
	}
	return func(ctx context.Context, _ string) (func(*cloudflare.Response), error) {
		p, err := gate.Acquire(ctx, priority)
		if err != nil {
			return nil, err
		}
		calls.Inc()
		return func(answer *cloudflare.Response) {
			p.Release()
			routing.Heed(gate, answer, pause)
		}, nil
	}
}

// pacedLists paces a check's key lists by hand: they are API calls,
// charged to their budget (SPEC §6), at each budget's rate cut to the
// address limit as serve cuts it. A check run by hand cannot take part in
// the replicas' shared budget (an operator may not write it), so it goes
// no faster than one replica alone would; budgetOf names an account's.
// What an answer asks of its budget (a 429's pause, for pause without a
// Retry-After; a hold; a lower quota) holds the check's next lists of it.
func pacedLists(rates map[string]float64, budgetOf func(account string) string, ip float64, pause time.Duration) (acquire func(context.Context, string) (func(*cloudflare.Response), error), stop func()) {
	gates := map[string]*throttle.Gate{}
	for name, r := range rates {
		gates[name] = throttle.New(throttle.Config{Priorities: 1, Concurrency: 1, Rate: routing.Rate(r, rates, ip)})
	}
	acquire = func(ctx context.Context, account string) (func(*cloudflare.Response), error) {
		g, ok := gates[budgetOf(account)]
		if !ok {
			return func(*cloudflare.Response) {}, nil // no credential serves it: its list fails without a call
		}
		p, err := g.Acquire(ctx, 0)
		if err != nil {
			return nil, err
		}
		return func(answer *cloudflare.Response) {
			p.Release()
			routing.Heed(g, answer, pause)
		}, nil
	}
	return acquire, func() {
		for _, g := range gates {
			g.Close()
		}
	}
}
