package ingress

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/docs"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
)

// StateQueued is the state of a stored event with no outcome record yet;
// StateStoring that of one whose first request is still storing it.
const (
	StateQueued  = "queued"
	StateStoring = "storing"
)

// Queued is the 202 answer: the event is stored, its outcome not known yet.
type Queued struct {
	EventID    string `json:"event_id"`
	State      string `json:"state"`
	AgeSeconds int64  `json:"age_seconds"`
	AccountID  string `json:"account_id"`
	KeyID      string `json:"key_id"`
	Subject    string `json:"subject,omitempty"`
	Stream     string `json:"stream,omitempty"`
	Sequence   uint64 `json:"sequence,omitempty"`
	TraceID    string `json:"trace_id,omitempty"`
}

// KeyRecords is the answer of GET /v1/keys/{account_id}/{key_id}: the
// key's outcome records, oldest first, as `revoker outcomes --key`.
type KeyRecords struct {
	AccountID string         `json:"account_id"`
	KeyID     string         `json:"key_id"`
	Records   []event.Record `json:"records"`
}

// call is what one request came to, for its metric and log line.
type call struct {
	route   string
	set     *callerSet // the callers in use when the request came
	caller  *Caller
	status  int
	eventID string
	traceID string
	prob    *Problem
	start   time.Time
}

func (c *call) callerName() string {
	if c.caller == nil {
		return UnknownCaller
	}
	return c.caller.Name
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, c *call)

// routes is the ingress's mux. Methods on a known path that has no such
// route are 405, other paths 404, both as problems.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	s.handle(mux, RoutePost, "/v1/revocations", s.postRevocation)
	s.handle(mux, RouteGet, "/v1/revocations/{id}", s.getRevocation)
	s.handle(mux, RouteKey, "/v1/keys/{account_id}/{key_id}", s.getKey)
	s.handle(mux, RouteOpenAPI, "/v1/openapi.json", s.getOpenAPI)
	for path, allow := range map[string]string{
		"/v1/revocations":                "POST",
		"/v1/revocations/{id}":           "GET, HEAD",
		"/v1/keys/{account_id}/{key_id}": "GET, HEAD",
		"/v1/openapi.json":               "GET, HEAD",
	} {
		mux.Handle(path, s.wrap(RouteOther, func(w http.ResponseWriter, r *http.Request, c *call) {
			w.Header().Set("Allow", allow)
			s.fail(w, c, problem(KindMethodNotAllowed, "use %s", allow))
		}))
	}
	mux.Handle("/", s.wrap(RouteOther, func(w http.ResponseWriter, r *http.Request, c *call) {
		s.fail(w, c, problem(KindNotFound, "no such route: see /v1/openapi.json"))
	}))
	return mux
}

// handle adds a route. Its request is a server span named by the route
// (SPEC §13), whose URL is the route's template: ids from the path never
// reach the trace store.
func (s *Server) handle(mux *http.ServeMux, pattern, template string, h handlerFunc) {
	traced := otelhttp.NewHandler(s.wrap(pattern, h), pattern, s.otelOptions()...)
	mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A shallow copy keeps the path values matched on the real path.
		r2 := r.WithContext(r.Context())
		u := *r.URL
		u.Path, u.RawPath, u.RawQuery = template, "", ""
		r2.URL, r2.RequestURI = &u, template
		traced.ServeHTTP(w, r2)
	}))
}

// wrap runs h and then counts and logs its request, once.
func (s *Server) wrap(route string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &call{route: route, start: s.now()}
		h(w, r, c)
		s.m.Requests.WithLabelValues(route, strconv.Itoa(c.status), c.callerName()).Inc()
		fields := []zap.Field{
			zap.String("route", route), zap.Int("status", c.status), zap.String("caller", c.callerName()),
			zap.Duration("took", s.now().Sub(c.start)), zap.String("remote", r.RemoteAddr),
		}
		if c.eventID != "" {
			fields = append(fields, zap.String("event_id", untrusted.Line(c.eventID, 256)))
		}
		if c.traceID != "" {
			fields = append(fields, zap.String("trace_id", c.traceID))
		}
		if c.prob != nil {
			fields = append(fields, zap.String("problem", c.prob.Type), zap.String("detail", untrusted.Line(c.prob.Detail, 512)))
		}
		if c.status >= 500 {
			s.log.Warn("ingress request", fields...)
		} else {
			s.log.Info("ingress request", fields...)
		}
	})
}

// reply writes v as JSON with status.
func (s *Server) reply(w http.ResponseWriter, c *call, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		s.fail(w, c, problem(KindInternal, "the answer could not be encoded"))
		return
	}
	// Records hold free text from events: C1 and bidirectional controls,
	// which encoding/json leaves raw, are escaped, as `--json` does
	// (SPEC §10); JSON readers see the same characters.
	s.write(w, c, status, "application/json", untrusted.EscapeJSON(body))
}

// fail writes p as application/problem+json.
func (s *Server) fail(w http.ResponseWriter, c *call, p *Problem) {
	c.prob = p
	if p.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(p.retryAfter))
	}
	if p.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="revoker"`)
	}
	p.Detail = untrusted.Line(p.Detail, 1024)
	body, _ := json.Marshal(p)
	s.write(w, c, p.Status, ProblemContentType, body)
}

func (s *Server) write(w http.ResponseWriter, c *call, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if c.traceID != "" {
		h.Set(HeaderTraceID, c.traceID)
	}
	c.status = status
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// callersOf is the set of callers c is judged by, taken at its first use.
func (s *Server) callersOf(c *call) *callerSet {
	if c.set == nil {
		c.set = s.callers.Load()
	}
	return c.set
}

// admit authenticates a request and takes a token of its caller's rate.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, c *call, body []byte) bool {
	if c.caller == nil {
		caller, why := s.callersOf(c).auth.authenticate(r.Header, body, s.now())
		if caller == nil {
			s.fail(w, c, problem(KindUnauthorized, "%s", why))
			return false
		}
		c.caller = caller
	}
	if ok, wait := s.callersOf(c).limits[c.caller.Name].take(s.now()); !ok {
		s.fail(w, c, problem(KindRateLimited, "over %g requests a second", c.caller.Rate).retry(retryAfter(wait)))
		return false
	}
	return true
}

// postRevocation is POST /v1/revocations.
func (s *Server) postRevocation(w http.ResponseWriter, r *http.Request, c *call) {
	c.traceID = tracing.TraceID(r.Context())
	// A bearer caller is known before the body is read; a signing one
	// only with it. A request with no credential of either kind is
	// refused as such (SPEC §11: 401), whatever else is wrong with it.
	switch {
	case r.Header.Get("Authorization") != "":
		caller, why := s.callersOf(c).auth.bearer(r.Header.Get("Authorization"))
		if caller == nil {
			s.fail(w, c, problem(KindUnauthorized, "%s", why))
			return
		}
		c.caller = caller
		// Its rate before anything else is read or answered: refused
		// bodies are requests too.
		if !s.admit(w, r, c, nil) {
			return
		}
	case r.Header.Get(HeaderWebhookSignature) == "" && r.Header.Get(HeaderPagerDuty) == "":
		s.fail(w, c, problem(KindUnauthorized, "no credential: send Authorization: Bearer <token>, or a webhook signature"))
		return
	}
	if !jsonContentType(r.Header.Get("Content-Type")) {
		s.fail(w, c, problem(KindUnsupportedMedia, "send Content-Type: application/json"))
		return
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(strings.TrimSpace(ce), "identity") {
		s.fail(w, c, problem(KindUnsupportedMedia, "send the body without a Content-Encoding"))
		return
	}
	if r.ContentLength > event.MaxBytes {
		s.fail(w, c, problem(KindTooLarge, "%d bytes, over the %d-byte limit", r.ContentLength, event.MaxBytes))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, event.MaxBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			s.fail(w, c, problem(KindTooLarge, "over the %d-byte limit", event.MaxBytes))
			return
		}
		// A stalled or broken upload: nothing is stored, and sending it
		// again can help (SPEC §11: a 5xx only then, and paging tools
		// drop other 4xx).
		s.fail(w, c, problem(KindUnavailable, "the body could not be read: nothing was stored; send the request again").retry(retryUnavailable))
		return
	}
	// The server's write deadline ran from the headers: a slow upload
	// would use up the time of the store, the wait and the answer.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(storeTimeout + s.cfg.MaxWait + writeMargin))
	if c.caller == nil && !s.admit(w, r, c, body) {
		return
	}
	caller := c.caller
	ev, err := event.Decode(body)
	if err != nil {
		s.fail(w, c, problem(KindInvalidEvent, "%v", err))
		return
	}
	urgent, err := urgentOf(body)
	if err != nil {
		s.fail(w, c, problem(KindInvalidEvent, "%v: %v", event.ErrInvalid, errUrgent))
		return
	}
	if urgent && !caller.Urgent {
		s.fail(w, c, problem(KindUrgentNotAllowed, "caller %s may not publish urgent revocations", caller.Name))
		return
	}
	if !caller.MayRevokeIn(ev.AccountID) {
		s.fail(w, c, problem(KindAccountNotAllowed, "caller %s may not revoke keys of account %s", caller.Name, ev.AccountID))
		return
	}
	key := r.Header.Get(HeaderIdempotencyKey)
	if id := r.Header.Get(HeaderWebhookID); id != "" && caller.Webhook() {
		// A signed delivery is the event its signature names: an
		// Idempotency-Key added to a captured one would make it another.
		key = id
	}
	if key == "" {
		key = r.Header.Get(HeaderWebhookID)
	}
	switch {
	case key == "":
		key = randomKey()
	case !validIdempotencyKey(key):
		s.fail(w, c, problem(KindInvalidRequest, "%s (or webhook-id) must be 1-%d bytes of visible ASCII", HeaderIdempotencyKey, MaxIdempotencyKey))
		return
	}
	// Namespaced by caller: two callers' keys never name one event.
	id := "ingress:" + caller.Name + ":" + key
	c.eventID = id

	wait, asked := preferWait(r.Header.Values(HeaderPrefer))
	wait = min(wait, s.cfg.MaxWait)
	waiting := asked && wait > 0 && s.cfg.Waiter != nil
	if waiting {
		// Taken before anything is stored, so a 503 here stores nothing.
		select {
		case s.waiting <- struct{}{}:
			defer func() { <-s.waiting }()
		default:
			s.fail(w, c, problem(KindTooManyWaiting, "at most %d requests may wait for outcomes at once: repeat the request, or send it without Prefer: wait", cap(s.waiting)).retry(1))
			return
		}
	}
	if !s.cfg.Client.JetStream().Conn().IsConnected() {
		s.fail(w, c, problem(KindUnavailable, "NATS is unreachable: this request stored nothing (an earlier one with the same idempotency key may have); try again").retry(retryUnavailable))
		return
	}
	subject := s.cfg.Subjects[len(s.cfg.Subjects)-1]
	if urgent {
		subject = s.cfg.Subjects[0]
	}
	claim := entry{Caller: caller.Name, BodySHA256: bodyDigest(body), State: stateStoring, EventID: id,
		Subject: subject, AccountID: ev.AccountID, KeyID: ev.KeyID, Urgent: urgent}
	// Stored whether or not the caller stays: a hang-up loses nothing.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), storeTimeout)
	e, prob := s.store(sctx, claim, ev, body)
	cancel()
	if prob != nil {
		s.fail(w, c, prob)
		return
	}
	if e.TraceID != "" {
		c.traceID = e.TraceID
	}
	p := e.published()
	if e.repeat && !waiting && s.cfg.Waiter != nil {
		// A repeat answers what the event has earned by now: its record
		// once there is one, as the first request would have been
		// answered had it waited.
		rctx, cancel := context.WithTimeout(r.Context(), s.cfg.Client.Timeout)
		rec, ok, err := s.cfg.Client.Recorded(rctx, p)
		cancel()
		if err == nil && ok {
			s.reply(w, c, http.StatusOK, rec)
			return
		}
	}
	if waiting {
		start := s.now()
		wctx, cancel := context.WithTimeout(r.Context(), wait)
		rec, ok, _ := s.cfg.Waiter.Wait(wctx, p)
		cancel()
		s.m.Wait.Observe(s.now().Sub(start).Seconds())
		w.Header().Set(HeaderPreferenceApplied, "wait="+strconv.Itoa(int(wait/time.Second)))
		if ok {
			s.reply(w, c, http.StatusOK, rec)
			return
		}
	}
	s.queued(w, c, e, StateQueued)
}

// queued answers 202 with the event's state and where to ask again.
func (s *Server) queued(w http.ResponseWriter, c *call, e entry, state string) {
	// The age is the event's from when the work stream stored it, where
	// that is known: a claim taken over is stored again, later.
	stored := e.StoredAt
	if !e.EventStoredAt.IsZero() {
		stored = e.EventStoredAt
	}
	age := int64(0)
	if !stored.IsZero() {
		age = max(int64(s.now().Sub(stored)/time.Second), 0)
	}
	w.Header().Set("Location", "/v1/revocations/"+url.PathEscape(e.EventID))
	w.Header().Set("Retry-After", strconv.Itoa(retryQueued))
	s.reply(w, c, http.StatusAccepted, Queued{EventID: e.EventID, State: state, AgeSeconds: age,
		AccountID: e.AccountID, KeyID: e.KeyID, Subject: e.Subject, Stream: e.Stream, Sequence: e.Sequence,
		TraceID: e.TraceID})
}

// getRevocation is GET /v1/revocations/{id}: the event's believed record,
// else its state. Callers see only their own events: another caller's is
// not found.
func (s *Server) getRevocation(w http.ResponseWriter, r *http.Request, c *call) {
	c.traceID = tracing.TraceID(r.Context())
	if !s.admit(w, r, c, nil) {
		return
	}
	id := r.PathValue("id")
	c.eventID = id
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.Client.Timeout)
	defer cancel()
	e, found, err := s.lookup(ctx, id)
	switch {
	case err != nil:
		s.log.Warn("ingress: bucket unreadable", zap.Error(err))
		s.fail(w, c, problem(KindUnavailable, "the ingress bucket cannot be read: try again").retry(retryUnavailable))
		return
	case !found || e.Caller != c.caller.Name:
		s.fail(w, c, problem(KindNotFound, "no event of this caller has this id (ids are kept 90 days, as records are)"))
		return
	}
	if e.TraceID != "" {
		// The answer and its log line are about the event: they name its
		// trace (SPEC §13), not the lookup's own.
		c.traceID = e.TraceID
	}
	if e.State == stateStoring && (e.Lost || s.now().After(e.end())) {
		// Its store went unanswered, or its request ended without
		// marking it: the trail may show it stored.
		if found, ok := s.recorded(ctx, e); ok {
			e = found
		}
	}
	switch {
	case e.State == stateStoring:
		// Being stored, or stored with its entry not yet marked (or, once
		// the claim is stale, perhaps never stored: a repeat of the
		// request settles it). Never "not found": a paging tool drops 4xx.
		s.queued(w, c, e, StateStoring)
		return
	}
	if s.cfg.Client.OutcomePrefix != "" {
		rec, ok, err := s.cfg.Client.Recorded(ctx, e.published())
		switch {
		case err != nil:
			s.log.Warn("ingress: audit trail unreadable", zap.Error(err))
			s.fail(w, c, problem(KindTrailUnavailable, "the audit trail cannot be read: try again").retry(retryUnavailable))
			return
		case ok:
			s.reply(w, c, http.StatusOK, rec)
			return
		}
	}
	s.queued(w, c, e, StateQueued)
}

// getKey is GET /v1/keys/{account_id}/{key_id}: the key's records, read
// from its own subject only.
func (s *Server) getKey(w http.ResponseWriter, r *http.Request, c *call) {
	c.traceID = tracing.TraceID(r.Context())
	if !s.admit(w, r, c, nil) {
		return
	}
	account, key := r.PathValue("account_id"), r.PathValue("key_id")
	if !cloudflare.ValidIdentifier(account) || !cloudflare.ValidIdentifier(key) {
		s.fail(w, c, problem(KindInvalidRequest, "account_id and key_id must be 1-32 characters of [A-Za-z0-9]"))
		return
	}
	if !c.caller.MayRevokeIn(account) {
		s.fail(w, c, problem(KindAccountNotAllowed, "caller %s may not read keys of account %s", c.caller.Name, account))
		return
	}
	cl := s.cfg.Client
	if cl.OutcomePrefix == "" {
		s.fail(w, c, problem(KindOutcomeRecordsOff, "this worker keeps no outcome records"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), cl.Timeout)
	defer cancel()
	recs, err := queue.KeyOutcomes(ctx, cl.JetStream(), cl.OutcomeStream, cl.OutcomePrefix, account, key, cl.Stray)
	if err != nil {
		s.log.Warn("ingress: audit trail unreadable", zap.Error(err))
		s.fail(w, c, problem(KindTrailUnavailable, "the audit trail cannot be read: try again").retry(retryUnavailable))
		return
	}
	if recs == nil {
		recs = []event.Record{}
	}
	s.reply(w, c, http.StatusOK, KeyRecords{AccountID: account, KeyID: key, Records: recs})
}

// getOpenAPI is GET /v1/openapi.json: the repository's own document.
func (s *Server) getOpenAPI(w http.ResponseWriter, r *http.Request, c *call) {
	s.write(w, c, http.StatusOK, "application/json", docs.OpenAPI)
}

// randomKey is the key of a request that sent none: a retry of it is a
// new event (send Idempotency-Key to make retries safe).
func randomKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
