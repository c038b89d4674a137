// Package routing sends each account's calls through its credential and
// the gate of that credential's rate budget (SPEC §6, §9): the budgets
// kept in JetStream and shared by every replica, each cut to stay under
// the address limit, the credentials file reloaded as it changes, and
// every credential checked with the API.
package routing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/logging"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/worker"
)

// BudgetGate is one rate budget shared by every replica (SPEC §9), kept
// under id in JetStream, and the gate that hands out its calls.
type BudgetGate struct {
	gate    *throttle.Gate
	budget  *queue.Budget
	m       metrics.Budget
	rate    float64 // calls per second, after any cut (Rate)
	ceiling float64 // the rate the gate was made at: rate can be set up to it
	closing atomic.Bool
}

// NewBudgetGate makes the budget named by id at rate, its gate taking
// concurrency calls at once; name is the budget's name in logs.
func NewBudgetGate(js jetstream.JetStream, cfg config.Config, id func() string, name string, rate float64,
	concurrency int, m metrics.Budget, log *zap.Logger) (*BudgetGate, error) {
	b, err := queue.NewBudget(js, queue.BudgetConfig{
		ID: id, Rate: rate, Create: cfg.CreateStreams, Log: log, Replicas: cfg.StreamReplicas,
	})
	if err != nil {
		return nil, err
	}
	if name != "" {
		log = log.With(zap.String("budget", name))
	}
	bg := &BudgetGate{budget: b, m: m, rate: rate}
	bg.gate = throttle.New(throttle.Config{
		Priorities:  len(cfg.Subjects),
		Concurrency: concurrency,
		Rate:        rate,
		Budget:      b,
		OnPause: func(paused bool) {
			if paused {
				m.Paused.Set(1)
			} else {
				m.Paused.Set(0)
				if !bg.closing.Load() { // a hold ended by Close resumes nothing
					log.Info("hold over: calls resume at the configured rate")
				}
			}
		},
		OnHold: func(length time.Duration, cause string) {
			log.Warn("the API asked for a hold: every call of every replica waits",
				zap.Duration("length", length), zap.String("cause", cause))
		},
	})
	return bg, nil
}

// Gate is the gate that hands out the budget's calls.
func (b *BudgetGate) Gate() *throttle.Gate { return b.gate }

// Close stops the gate and the budget.
func (b *BudgetGate) Close() {
	b.closing.Store(true)
	b.gate.Close()
	if b.budget != nil {
		b.budget.Close()
	}
}

// Rate is the rate a budget configured at rate (0: no limit of its
// own) runs at so that the budgets of all, together, stay under the
// address limit ip (0: none): each is cut in the same proportion, a budget
// with no limit of its own counted at the whole address limit. A cut is
// exact and costs nothing per call, where a second rate gate in a row
// would leave slots of one unused while calls wait for the other.
func Rate(rate float64, all map[string]float64, ip float64) float64 {
	if ip <= 0 {
		return rate
	}
	sum := 0.0
	for _, r := range all {
		if r <= 0 || r > ip {
			r = ip
		}
		sum += r
	}
	if rate <= 0 || rate > ip {
		rate = ip
	}
	if sum > ip {
		rate *= ip / sum
	}
	return rate
}

// Routes meets worker.Routes from the credentials file: an account's
// credential, and the gate of its budget, made on this connection the
// first time the budget is needed (a budget added by a reload included).
type Routes struct {
	ipLimit float64            // REVOKER_IP_RATE_LIMIT
	shared  *throttle.Gate     // the calls in flight, every budget's
	ready   *metrics.Readiness // where each credential's condition is kept
	router  *credentials.Router
	make    func(name string, rate float64) (*BudgetGate, error)
	metrics func(name string) metrics.Budget
	log     *zap.Logger
	// pause is how long a 429 without Retry-After on a check or a list
	// holds its budget: REVOKER_RETRY_INITIAL, a DELETE's first backoff.
	pause time.Duration

	mu       sync.Mutex
	budgets  map[string]*BudgetGate
	checking map[string]*recheck // by credential: one recheck at a time
	closed   bool
	cutFor   *credentials.Set // the set the budgets' rates were last cut for
}

// Route implements worker.Routes. A budget whose gate cannot be made
// (its bucket away) is tried again by the next event; meanwhile the
// account's events are given back like any other unreachable budget's.
func (r *Routes) Route(account string) (worker.Route, bool) {
	c, ok := r.router.For(account)
	if !ok {
		return worker.Route{}, false
	}
	r.recut()
	b := r.budget(c.Budget, c.Rate)
	if b == nil {
		return worker.Route{Credential: c.Name, Budget: r.metrics(c.Budget)}, true
	}
	return worker.Route{Credential: c.Name, Identity: c.Auth.ID() + " " + c.Budget,
		Gate: b.gate, Budget: b.m, Rate: r.rateOf(b), API: c.Client,
		Recheck: func(ctx context.Context, p int) bool { return r.recheck(ctx, c, account, p) }}, true
}

// Changed is closed once the credentials in use change (worker.Rerouter).
func (r *Routes) Changed() <-chan struct{} { return r.router.Changed() }

// rateOf is b's rate, as last cut.
func (r *Routes) rateOf(b *BudgetGate) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return b.rate
}

// recut sets the rates of the budgets made so far again, once the
// credentials in use change: every replica cuts each budget from the set
// in use alone (Rate), whatever it made before, so that all the budgets
// of the fleet together stay under the address limit (SPEC §9), and a
// rate changed in the file, or a share freed by a budget removed, applies
// as the file is re-read (§6), not at the next start.
func (r *Routes) recut() {
	set := r.router.Set()
	r.mu.Lock()
	defer r.mu.Unlock()
	if set == r.cutFor {
		return
	}
	r.cutFor = set
	all := set.Budgets()
	for name, b := range r.budgets {
		rate, inUse := all[name]
		if !inUse {
			continue // no calls: it counts for nothing
		}
		r.setRate(name, b, Rate(rate, all, r.ipLimit))
	}
}

// ceiling is the rate a budget's gate is made at: the address limit, which
// no budget's cut exceeds, so that the gate's rate can later be set lower
// or higher (throttle.Gate.Cap); without an address limit, the budget's
// own rate, which the gate can then only be set under.
func (r *Routes) ceiling(rate float64) float64 {
	if r.ipLimit > 0 {
		return r.ipLimit
	}
	return rate
}

// setRate runs b's calls at rate (0: no limit of its own) from its next
// permit on, as far as its gate, made at its ceiling, can go; what it
// cannot applies at the next start, and the log says so. A gate made
// without any rate (no rate of its own, no address limit) takes none
// while it runs: a gate made again would strand the calls waiting at it.
func (r *Routes) setRate(name string, b *BudgetGate, rate float64) {
	set := rate
	if b.ceiling > 0 && (rate <= 0 || rate > b.ceiling) {
		set = b.ceiling
	}
	if set != b.rate && b.gate.Cap(set) {
		r.log.Info("the budget's rate is set again for the credentials in use",
			zap.String("budget", name), zap.Float64("rate", b.rate), zap.Float64("now", set))
		b.rate = set
	}
	if set != rate || b.rate != rate {
		r.log.Warn("the budget's new rate applies when revoker starts again: without REVOKER_IP_RATE_LIMIT, a budget's rate can be set while it runs only at or under the rate it started with, and not at all if it started with none",
			zap.String("budget", name), zap.Float64("rate", b.rate), zap.Float64("asked", rate))
	}
}

// budget returns the gate of budget name, made at rate if new.
func (r *Routes) budget(name string, rate float64) *BudgetGate {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.budgets[name]; ok || r.closed {
		return b
	}
	all := r.router.Set().Budgets() // a copy: the budgets of the set in use
	all[name] = rate
	cut := Rate(rate, all, r.ipLimit)
	if cut != rate {
		r.log.Info("the budget's rate is cut so that every budget together stays under REVOKER_IP_RATE_LIMIT",
			zap.String("budget", name), zap.Float64("rate", rate), zap.Float64("cut_to", cut))
	}
	ceiling := r.ceiling(cut)
	b, err := r.make(name, ceiling)
	if err != nil {
		r.log.Error("a rate budget could not be set up", zap.String("budget", name), zap.Error(err))
		return nil
	}
	// Before its first permit: it never runs faster than its cut.
	b.gate.Cap(cut)
	b.rate, b.ceiling = cut, ceiling
	r.budgets[name] = b
	return b
}

// Turn returns what charges one call for an account to its budget and to
// shared, at priority p: a key list of the periodic check, say. The call's
// answer, given back with the turn, holds the budget as a DELETE's would
// (Heed). An account no credential serves has no turn.
func (r *Routes) Turn(shared *throttle.Gate, p int) func(ctx context.Context, account string) (func(*cloudflare.Response), error) {
	return func(ctx context.Context, account string) (func(*cloudflare.Response), error) {
		rt, ok := r.Route(account)
		if !ok {
			return nil, credentials.ErrAccountNotAllowed
		}
		if rt.Gate == nil {
			return nil, errors.New("the account's rate budget could not be set up")
		}
		pm, err := throttle.AcquirePair(ctx, rt.Gate, shared, p)
		if err != nil {
			return nil, err
		}
		rt.Budget.Calls.Inc()
		return func(answer *cloudflare.Response) {
			pm.Release()
			Heed(rt.Gate, answer, r.pause)
		}, nil
	}
}

// Heed makes g, a budget's gate, hold what an answer to a call charged to
// it other than a DELETE (a token check, a key list) asks of every call of
// the budget, as the worker does for a DELETE's (SPEC §4, §9): a 429
// pauses them, for its Retry-After or, without one, for pause; a
// Retry-After on any other answer holds them, and so does a Ratelimit
// header with nothing left, until its reset. The gate caps each at 5
// minutes. A quota the answer states (Ratelimit-Policy) lower than the
// budget's rate lowers it (SPEC §6), reported by lowered.
func Heed(g *throttle.Gate, answer *cloudflare.Response, pause time.Duration) (lowered bool) {
	if answer == nil || g == nil {
		return false
	}
	if answer.Policy.Known {
		lowered = g.Quota(answer.Policy.PerSecond())
	}
	switch {
	case answer.Status == http.StatusTooManyRequests:
		if answer.HasRetryAfter && answer.RetryAfter > 0 {
			pause = answer.RetryAfter
		}
		g.Pause(pause)
	case answer.HasRetryAfter && answer.RetryAfter > 0:
		g.Hold(answer.RetryAfter, fmt.Sprintf(throttle.CauseRetryAfter, answer.Status))
	}
	if rl := answer.RateLimit; rl.Known && rl.Remaining == 0 && rl.Reset > 0 {
		g.Hold(rl.Reset, throttle.CauseRateHeader)
	}
	return lowered
}

// Close stops every budget's gate.
func (r *Routes) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, b := range r.budgets {
		b.Close()
	}
}

// verifyAll checks every credential of set with the API, each charged to
// its budget at the lowest priority and to the shared gate, and sets its
// readiness condition (SPEC §6: a refused credential makes only its own
// accounts wait).
func (r *Routes) verifyAll(ctx context.Context, set *credentials.Set, all *throttle.Gate, lowest int, ready *metrics.Readiness) {
	// A credential no longer in the file no longer counts for /readyz.
	for _, n := range ready.Names() {
		name, ok := strings.CutPrefix(n, metrics.CredentialGroup)
		if _, inSet := set.Credential(name); ok && !inSet {
			ready.Remove(n)
		}
	}
	for _, c := range set.Credentials() {
		ready.Declare(worker.ReadyCredentialOf(c.Name))
		go r.verify(ctx, c, all, lowest, ready)
	}
}

// credentialRefused reports whether a check's answer refuses the
// credential: a 2xx that does not call it active, or a 4xx other than 429.
func credentialRefused(v *cloudflare.Verification) bool {
	return v.Status >= 200 && v.Status <= 299 || v.Status >= 400 && v.Status <= 499 && v.Status != http.StatusTooManyRequests
}

// recheck is one credential's checks: those made before calls, one at a
// time, and the order of all of them.
type recheck struct {
	mu   sync.Mutex
	done time.Time // when the last one before a call ended
	// started numbers the checks as they start. An answer is applied,
	// under applying, unless a newer check's answer was applied first
	// (applied): a slow answer to an older check (of a token since
	// replaced) must not undo a newer one's, while a newer check that
	// got no answer leaves an older one's to count.
	started  atomic.Uint64
	applying sync.Mutex
	applied  uint64
}

// checks is the credential's recheck, made on first use.
func (r *Routes) checks(name string) *recheck {
	r.mu.Lock()
	defer r.mu.Unlock()
	rc, ok := r.checking[name]
	if !ok {
		rc = &recheck{}
		r.checking[name] = rc
	}
	return rc
}

// recheckServes is how long a check serves the calls waiting for one, as
// one key list serves the 404s before it: deliveries of a refused
// credential's accounts come together, and one check answers them all.
const recheckServes = time.Second

// recheck checks a refused credential again, at priority p, one check at a
// time per credential (one that ended within recheckServes is taken as it
// found), and reports whether it works now.
func (r *Routes) recheck(ctx context.Context, c *credentials.Credential, account string, p int) bool {
	cond := worker.ReadyCredentialOf(c.Name)
	rc := r.checks(c.Name)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if r.ready.Met(cond) || time.Since(rc.done) < recheckServes {
		return r.ready.Met(cond)
	}
	r.verifyFor(ctx, c, account, r.shared, p, r.ready)
	rc.done = time.Now()
	return r.ready.Met(cond)
}

// verify checks one credential.
func (r *Routes) verify(ctx context.Context, c *credentials.Credential, all *throttle.Gate, lowest int, ready *metrics.Readiness) {
	r.verifyFor(ctx, c, "", all, lowest, ready)
}

// verifyFor checks one credential; an account token's check asks its
// first named account, or, for a credential named only by "*", account
// (an account it serves; "" when none is at hand).
func (r *Routes) verifyFor(ctx context.Context, c *credentials.Credential, account string, all *throttle.Gate, lowest int, ready *metrics.Readiness) {
	if named := c.VerifyAccount(); named != "" {
		account = named
	}
	cond := worker.ReadyCredentialOf(c.Name)
	r.recut()
	b := r.budget(c.Budget, c.Rate)
	if b == nil {
		return
	}
	order := r.checks(c.Name)
	ticket := order.started.Add(1)
	// Each request of the check is a call of the budget and the address
	// limit (an account token's check is two: the user endpoint first).
	var lowered float64 // the quota an answer lowered the budget to, per second
	v, err := c.Client.VerifyTokenEach(ctx, account, func(ctx context.Context) (func(*cloudflare.Response), error) {
		pm, err := throttle.AcquirePair(ctx, b.gate, all, lowest)
		if err != nil {
			return nil, err
		}
		b.m.Calls.Inc()
		return func(answer *cloudflare.Response) {
			pm.Release()
			// Whatever it says of the credential, a hold each answer
			// asks for holds the budget, the check's next request
			// included, and a lower quota it states paces it.
			order.applying.Lock()
			defer order.applying.Unlock()
			if ctx.Err() == nil && Heed(b.gate, answer, r.pause) {
				lowered = answer.Policy.PerSecond()
			}
		}, nil
	})
	order.applying.Lock()
	defer order.applying.Unlock()
	if lowered > 0 {
		r.log.Warn("the API states a lower quota than the budget's rate; calls are spaced to it",
			zap.String("budget", c.Budget), zap.Float64("rate", r.rateOf(b)), zap.Float64("quota_per_second", lowered))
	}
	switch {
	case ctx.Err() != nil:
		return
	case ticket < order.applied:
		r.log.Info("a credential check's answer came after a newer check's; the newer one's counts",
			zap.String("credential", c.Name))
	case err != nil:
		// No answer proves nothing either way: the first call will tell.
		r.log.Warn("a credential could not be checked", zap.String("credential", c.Name), zap.Error(err))
	case !v.Active && !credentialRefused(v):
		// A 429 or a 5xx says nothing of the credential.
		r.log.Warn("a credential could not be checked", zap.String("credential", c.Name),
			zap.Int("status", v.Status), zap.String("cf_ray", v.CFRay))
	case !v.Active:
		why := "the API refused the credential (" + v.Endpoint + " check, HTTP " + strconv.Itoa(v.Status)
		if v.TokenStatus != "" {
			why += ", token " + v.TokenStatus
		}
		ready.Update(cond, why+")") // not if a reload took the credential out meanwhile
		order.applied = ticket
		r.log.Error("the API refused a credential; its accounts wait until it works",
			zap.String("credential", c.Name), zap.Int("status", v.Status), zap.String("token_status", v.TokenStatus),
			zap.String("cf_ray", v.CFRay))
	default:
		ready.Update(cond, "")
		order.applied = ticket
		r.log.Info("credential accepted", zap.String("credential", c.Name), zap.String("check", v.Endpoint))
	}
}

// File is the credentials file in use (SPEC §6): the router
// that calls with each account's credential, reloaded when the file
// changes, and the checks of its credentials.
type File struct {
	router *credentials.Router
	log    *zap.Logger
	// recheck names a credential to check again ("" for every one): its
	// secret file changed, or the file did.
	recheck chan string
}

// Load reads the credentials file; its error names the line
// and the reason, never a secret.
func Load(cfg config.Config, userAgent string, log *zap.Logger) (*File, error) {
	f := &File{log: log, recheck: make(chan string, 64)}
	set, err := credentials.Load(cfg.CredentialsFile, credentials.Options{
		DefaultRate: cfg.RateLimit, BaseURL: cfg.BaseURL, Timeout: cfg.HTTPTimeout, UserAgent: userAgent,
		Transport: tracing.Transport(cloudflare.DefaultTransport()),
		OnSecretChange: func(name string) {
			log.Info("a credential's secret file changed; checking it again", zap.String("credential", name))
			f.ask(name)
		},
		OnSecretError: func(name string, err error) {
			if err != nil {
				log.Error("a credential's secret file cannot be used; keeping the previous secret",
					zap.String("credential", name), zap.Error(err))
			} else {
				log.Info("a credential's secret file is readable again", zap.String("credential", name))
			}
		},
	})
	if err != nil {
		return nil, err // the one line of a bad configuration (SPEC §6)
	}
	f.router = credentials.NewRouter(set)
	return f, nil
}

// Announce logs, once the start's other settings are known good, which
// credentials are in use, and warns of the single-credential variables the
// file makes ignored (SPEC §6). It is not part of Load, so that a bad
// value found after Load stays the one line on stderr.
func (f *File) Announce(cfg config.Config) {
	if names := cfg.IgnoredCredentials(); len(names) > 0 {
		f.log.Warn("REVOKER_CREDENTIALS_FILE is set: these variables are ignored", zap.Strings("variables", names))
	}
	set := f.router.Set()
	names := make([]string, 0, len(set.Credentials()))
	for _, c := range set.Credentials() {
		names = append(names, c.Name)
	}
	f.log.Info("API credentials from REVOKER_CREDENTIALS_FILE", zap.Int("count", len(names)),
		zap.Strings("credentials", logging.Few(names)), zap.Strings("budgets", logging.Few(f.Budgets())))
}

// Router calls with each account's credential from the set in use.
func (f *File) Router() *credentials.Router { return f.router }

// Budgets names the budgets of the credentials in use, sorted; none for a
// nil File (no credentials file).
func (f *File) Budgets() []string {
	if f == nil {
		return nil
	}
	var out []string
	for b := range f.router.Set().Budgets() {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

// ask has the credential name checked again ("" every one); a full
// queue of checks already covers it.
func (f *File) ask(name string) {
	select {
	case f.recheck <- name:
	default:
	}
}

// Watch re-reads the file until ctx ends (SPEC §6: within 5 s of a change);
// a change that does not load keeps the credentials in use.
func (f *File) Watch(ctx context.Context) {
	credentials.Watch(ctx, f.router.Set(), 0, func(s *credentials.Set) {
		f.router.Store(s)
		f.log.Info("credentials file changed: its credentials are in use from now on", zap.Int("credentials", len(s.Credentials())))
		f.ask("")
	}, func(err error) {
		f.log.Error("credentials file cannot be used; keeping the credentials in use", zap.Error(err))
	})
}

// RoutesOn makes the routes of one NATS connection: each budget's gate is
// kept in JetStream on it.
func (f *File) RoutesOn(js jetstream.JetStream, cfg config.Config, m *metrics.Metrics, shared *throttle.Gate, ready *metrics.Readiness, log *zap.Logger) *Routes {
	return &Routes{
		router: f.router, log: log, budgets: map[string]*BudgetGate{}, checking: map[string]*recheck{},
		metrics: m.Budget, ipLimit: cfg.IPRateLimit, shared: shared, ready: ready, pause: cfg.RetryInitial,
		make: func(name string, rate float64) (*BudgetGate, error) {
			return NewBudgetGate(js, cfg, func() string { return "budget:" + name }, name, rate, throttle.Unbounded, m.Budget(name), log)
		},
	}
}

// Verifying checks every credential at once, then each one asked for,
// until ctx ends.
func (f *File) Verifying(ctx context.Context, r *Routes, all *throttle.Gate, lowest int, ready *metrics.Readiness) {
	r.verifyAll(ctx, f.router.Set(), all, lowest, ready)
	for {
		select {
		case <-ctx.Done():
			return
		case name := <-f.recheck:
			set := f.router.Set()
			if name == "" {
				r.verifyAll(ctx, set, all, lowest, ready)
			} else if c, ok := set.Credential(name); ok {
				go r.verify(ctx, c, all, lowest, ready)
			}
		}
	}
}
