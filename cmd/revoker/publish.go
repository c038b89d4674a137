package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/worker"
)

// Bounds of the one-shot commands: they report a problem instead of
// retrying forever as the worker does.
const (
	dialTimeout = 5 * time.Second  // to reach NATS
	opTimeout   = 10 * time.Second // one JetStream request
	// publishWindow is how many batch publishes may await their
	// acknowledgement at once: enough to keep the server busy, few enough
	// that a stalled server does not leave thousands in doubt.
	publishWindow = 256
	maxMsgID      = 128
)

func publishCmd(ctx context.Context, args []string, e env) int {
	e = lockedEnv(e)
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	account := fs.String("account", "", "account `ID` that holds the key")
	key := fs.String("key", "", "signing key `ID` to revoke")
	subject := fs.String("subject", "", "work `subject` to publish on (default: the lowest-priority one)")
	urgent := fs.Bool("urgent", false, "publish on the highest-priority subject")
	reason := fs.String("reason", "", "why the key is revoked (kept in logs and records)")
	requestedBy := fs.String("requested-by", "", "who or what asks")
	id := fs.String("id", "", "the event's Nats-Msg-Id (default: a new UUIDv7); 1-128 characters of [A-Za-z0-9._:-]")
	fromFile := fs.String("from-file", "", "publish one event (a JSON object) per line of `FILE`; - reads standard input")
	wait := fs.Bool("wait", false, "wait for the outcome of each event and print it")
	timeout := fs.Duration("timeout", 30*time.Second, "how long --wait waits for outcomes")
	asJSON := fs.Bool("json", false, "print JSON, one object per line")
	cfg, code := parse(fs, config.NATS|config.Work|config.Outcomes, args, e)
	if code >= 0 {
		return code
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "revoker publish: "+format+"\n", a...)
		return exitUsage
	}

	subj := cfg.LowestPriority()
	switch {
	case *urgent && given["subject"]:
		return usageErr("give --urgent or --subject, not both")
	case *urgent:
		subj = cfg.HighestPriority()
	case given["subject"]:
		if !slices.Contains(cfg.Subjects, *subject) {
			return usageErr("--subject %q is not a work subject (%s)", *subject, strings.Join(cfg.Subjects, ", "))
		}
		subj = *subject
	}
	if *wait {
		if !cfg.OutcomeEnabled() {
			return usageErr("--wait needs outcome records, but REVOKER_OUTCOME_SUBJECT is empty (outcome records are off)")
		}
		if *timeout <= 0 {
			return usageErr("--timeout must be positive, got %s", *timeout)
		}
	}

	p := publisher{cfg: cfg, e: e, subject: subj, wait: *wait, timeout: *timeout, json: *asJSON}
	if given["from-file"] {
		for _, f := range []string{"account", "key", "id", "reason", "requested-by"} {
			if given[f] {
				return usageErr("--%s cannot be used with --from-file: each line is a whole event", f)
			}
		}
		if *fromFile == "" {
			return usageErr("--from-file needs a file name, or - for standard input")
		}
		return p.batch(ctx, *fromFile)
	}

	if *account == "" || *key == "" {
		return usageErr("--account and --key are required (or --from-file)")
	}
	msgID := *id
	if given["id"] {
		if err := checkMsgID(msgID); err != nil {
			return usageErr("--id: %v", err)
		}
	} else {
		msgID = newEventID()
	}
	body, err := json.Marshal(worker.Event{
		AccountID: *account, KeyID: *key, Reason: *reason, RequestedBy: *requestedBy,
		RequestedAt: time.Now().UTC().Truncate(time.Millisecond),
	})
	if err != nil {
		return usageErr("%v", err)
	}
	// The worker's own rules decide, so nothing is published that the
	// worker would refuse.
	if _, err := worker.DecodeEvent(body); err != nil {
		return usageErr("%v; nothing published", err)
	}
	return p.one(ctx, msgID, body, *account, *key)
}

// publisher holds what both forms of `revoker publish` share.
type publisher struct {
	cfg     config.Config
	e       env
	subject string
	wait    bool
	timeout time.Duration
	json    bool

	nc  *nats.Conn
	js  jetstream.JetStream
	sub *nats.Subscription // outcome records, when waiting
}

// open connects, checks the work stream, and subscribes to outcome records
// when waiting. The subscription is in place (flushed) before anything is
// published, so a fast worker's outcome cannot be missed.
func (p *publisher) open(ctx context.Context) error {
	nc, err := dial(p.cfg, p.e)
	if err != nil {
		return err
	}
	p.nc = nc
	p.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(2*publishWindow),
		jetstream.WithPublishAsyncTimeout(opTimeout))
	if err != nil {
		return err
	}
	if err := checkWorkStream(ctx, p.js, p.cfg, p.subject); err != nil {
		return err
	}
	if p.wait {
		if p.sub, err = nc.SubscribeSync(p.cfg.OutcomeSubject); err != nil {
			return fmt.Errorf("subscribe to outcome records on %s: %w", p.cfg.OutcomeSubject, err)
		}
		// Outcomes of a large batch may all arrive before we read them.
		_ = p.sub.SetPendingLimits(-1, 256<<20)
		if err := nc.FlushTimeout(opTimeout); err != nil {
			return fmt.Errorf("subscribe to outcome records on %s: %w", p.cfg.OutcomeSubject, err)
		}
	}
	return nil
}

func (p *publisher) close() {
	if p.nc != nil {
		p.nc.Close()
	}
}

func (p *publisher) msg(id string, body []byte) *nats.Msg {
	m := nats.NewMsg(p.subject)
	m.Data = body
	m.Header.Set(jetstream.MsgIDHeader, id)
	return m
}

// published is the acknowledgement of one event, as printed.
type published struct {
	Line      int    `json:"line,omitempty"`
	EventID   string `json:"event_id"`
	Subject   string `json:"subject"`
	Stream    string `json:"stream"`
	Sequence  uint64 `json:"sequence"`
	Duplicate bool   `json:"duplicate"`
}

func (p *publisher) one(ctx context.Context, id string, body []byte, account, key string) int {
	e := p.e
	defer p.close()
	if err := p.open(ctx); err != nil {
		fmt.Fprintf(e.stderr, "revoker publish: %v\n", err)
		return exitFailed
	}
	pctx, cancel := context.WithTimeout(ctx, opTimeout)
	ack, err := p.js.PublishMsg(pctx, p.msg(id, body), jetstream.WithExpectStream(p.cfg.Stream))
	cancel()
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker publish: %v\n", publishError(p.cfg, p.subject, err))
		return exitFailed
	}
	rec := published{EventID: id, Subject: p.subject, Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}
	if p.json {
		printJSON(e.stdout, rec)
	} else {
		fmt.Fprintf(e.stdout, "published %s to %s (stream %s, sequence %d)\n", id, p.subject, ack.Stream, ack.Sequence)
	}
	if ack.Duplicate {
		fmt.Fprintf(e.stderr, "revoker publish: the work stream already holds an event with id %s (duplicate window %s): not published again\n",
			id, queue.DuplicateWindow)
	}
	if !p.wait {
		return exitOK
	}

	deadline := time.Now().Add(p.timeout)
	var got *queue.Outcome
	if ack.Duplicate {
		// The first copy may be done already: its outcome is then in the
		// outcome stream, not on its way.
		got = p.earlierOutcome(ctx, id)
	}
	if got == nil {
		want := map[string]bool{id: true}
		err = awaitOutcomes(ctx, p.sub, want, deadline, func(o queue.Outcome) { got = &o })
		if err != nil && got == nil {
			fmt.Fprintf(e.stderr, "revoker publish: waiting for the outcome: %v\n", err)
			return exitFailed
		}
	}
	if got == nil {
		fmt.Fprintf(e.stderr, "revoker publish: no outcome for event %s within %s; it is published and will be processed when a worker takes it (later: revoker outcomes --key %s)\n",
			id, p.timeout, key)
		return exitTimeout
	}
	p.printOutcome(0, *got)
	if got.Outcome == "dead_lettered" {
		fmt.Fprintf(e.stderr, "revoker publish: event %s was dead-lettered (%s); see: revoker dlq list --reason %s\n",
			id, cell(got.Reason), cell(got.Reason))
	}
	return outcomeStatus(got.Outcome)
}

// earlierOutcome looks up the outcome of id among the records of the last
// duplicate windows; nil if there is none (yet).
func (p *publisher) earlierOutcome(ctx context.Context, id string) *queue.Outcome {
	var found *queue.Outcome
	since := time.Now().Add(-3 * queue.DuplicateWindow)
	rctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_ = queue.EachOutcome(rctx, p.js, p.cfg.OutcomeStream, since, func(o queue.Outcome) error {
		if o.EventID == id {
			found = &o
		}
		return nil
	})
	return found
}

// awaitOutcomes reads outcome records from sub until every id in want has
// one (ids are removed from want as their outcome arrives), the deadline
// passes (nil error, ids left in want), or ctx ends.
func awaitOutcomes(ctx context.Context, sub *nats.Subscription, want map[string]bool, deadline time.Time, on func(queue.Outcome)) error {
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	for len(want) > 0 {
		m, err := sub.NextMsgWithContext(wctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if wctx.Err() != nil {
				return nil
			}
			return err
		}
		id := m.Header.Get(queue.HeaderEventID)
		if !want[id] {
			continue // another publisher's event
		}
		var o queue.Outcome
		if err := json.Unmarshal(m.Data, &o); err != nil {
			continue
		}
		delete(want, id)
		on(o)
	}
	return nil
}

// outcomeStatus is the exit status of `publish --wait` for an outcome.
func outcomeStatus(outcome string) int {
	switch outcome {
	case "revoked", "not_found":
		return exitOK
	}
	return exitFailed
}

// lineOutcome is an outcome record with the line of the batch it answers.
type lineOutcome struct {
	Line int `json:"line,omitempty"`
	queue.Outcome
}

func (p *publisher) printOutcome(line int, o queue.Outcome) {
	if p.json {
		printJSON(p.e.stdout, lineOutcome{Line: line, Outcome: o})
		return
	}
	var b strings.Builder
	if line > 0 {
		fmt.Fprintf(&b, "line %d: ", line)
	}
	b.WriteString(cell(o.Outcome))
	if o.Reason != "" {
		fmt.Fprintf(&b, " reason=%s", cell(o.Reason))
	}
	fmt.Fprintf(&b, " account=%s key=%s", cell(o.AccountID), cell(o.KeyID))
	if o.Outcome != "timeout" {
		fmt.Fprintf(&b, " status=%d attempts=%d cf_ray=%s completed_at=%s", o.Status, o.Attempts, cell(o.CFRay), cell(o.CompletedAt))
	}
	fmt.Fprintf(&b, " event_id=%s", cell(o.EventID))
	fmt.Fprintln(p.e.stdout, b.String())
}

// batchEvent is one published line of a batch.
type batchEvent struct {
	line         int
	id           string
	account, key string
}

// batchSummary counts what became of a batch.
type batchSummary struct {
	Lines        int `json:"lines"`
	Invalid      int `json:"invalid"`
	Published    int `json:"published"`
	Duplicate    int `json:"duplicate"`
	Failed       int `json:"failed"`
	Revoked      int `json:"revoked"`
	NotFound     int `json:"not_found"`
	DeadLettered int `json:"dead_lettered"`
	TimedOut     int `json:"timed_out"`
}

func (p *publisher) batch(ctx context.Context, file string) int {
	e := p.e
	var in io.Reader = e.stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintf(e.stderr, "revoker publish: --from-file: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		in = f
	}
	defer p.close()
	if err := p.open(ctx); err != nil {
		fmt.Fprintf(e.stderr, "revoker publish: %v\n", err)
		return exitFailed
	}

	var (
		sum      batchSummary
		events   []batchEvent
		inflight []struct {
			ev  batchEvent
			fut jetstream.PubAckFuture
		}
	)
	// settle waits for the oldest publish in flight.
	settle := func() {
		f := inflight[0]
		inflight = inflight[1:]
		var err error
		select {
		case ack := <-f.fut.Ok():
			sum.Published++
			if ack.Duplicate {
				sum.Duplicate++
			}
			events = append(events, f.ev)
			if p.json && !p.wait {
				printJSON(e.stdout, published{Line: f.ev.line, EventID: f.ev.id, Subject: p.subject,
					Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate})
			}
			return
		case err = <-f.fut.Err():
		case <-ctx.Done():
			err = ctx.Err()
		}
		sum.Failed++
		fmt.Fprintf(e.stderr, "line %d: not published: %v\n", f.ev.line, publishError(p.cfg, p.subject, err))
	}

	r := bufio.NewReaderSize(in, 64<<10)
	var (
		readErr error
		n       int // the line number
	)
	for ctx.Err() == nil {
		n++
		line, tooLong, err := readLine(r, worker.MaxEventBytes)
		if err != nil {
			if err != io.EOF {
				readErr = err
			}
			break
		}
		if n == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 && !tooLong {
			continue
		}
		sum.Lines++
		if tooLong {
			sum.Invalid++
			fmt.Fprintf(e.stderr, "line %d: invalid event: more than %d bytes; skipped\n", n, worker.MaxEventBytes)
			continue
		}
		ev, err := worker.DecodeEvent(line)
		if err != nil {
			sum.Invalid++
			fmt.Fprintf(e.stderr, "line %d: %v; skipped\n", n, err)
			continue
		}
		be := batchEvent{line: n, id: newEventID(), account: ev.AccountID, key: ev.KeyID}
		for len(inflight) >= publishWindow {
			settle()
		}
		fut, err := p.js.PublishMsgAsync(p.msg(be.id, line), jetstream.WithExpectStream(p.cfg.Stream))
		if err != nil {
			sum.Failed++
			fmt.Fprintf(e.stderr, "line %d: not published: %v\n", n, publishError(p.cfg, p.subject, err))
			continue
		}
		inflight = append(inflight, struct {
			ev  batchEvent
			fut jetstream.PubAckFuture
		}{be, fut})
	}
	for len(inflight) > 0 {
		settle()
	}
	if readErr != nil {
		fmt.Fprintf(e.stderr, "revoker publish: reading %s: %v; the lines from line %d on were not read\n", file, readErr, n)
		sum.Failed++
	}
	if ctx.Err() != nil {
		fmt.Fprintln(e.stderr, "revoker publish: interrupted; the rest of the input was not published")
		sum.Failed++
	}

	if p.wait && len(events) > 0 && ctx.Err() == nil {
		want := make(map[string]bool, len(events))
		byID := make(map[string]batchEvent, len(events))
		for _, ev := range events {
			want[ev.id] = true
			byID[ev.id] = ev
		}
		err := awaitOutcomes(ctx, p.sub, want, time.Now().Add(p.timeout), func(o queue.Outcome) {
			switch o.Outcome {
			case "revoked":
				sum.Revoked++
			case "not_found":
				sum.NotFound++
			default:
				sum.DeadLettered++
			}
			p.printOutcome(byID[o.EventID].line, o)
		})
		if err != nil {
			fmt.Fprintf(e.stderr, "revoker publish: waiting for outcomes: %v\n", err)
			sum.Failed++
		}
		for _, ev := range events { // in line order
			if want[ev.id] {
				sum.TimedOut++
				p.printOutcome(ev.line, queue.Outcome{EventID: ev.id, AccountID: ev.account, KeyID: ev.key, Outcome: "timeout"})
			}
		}
	}
	p.printSummary(sum)

	// The worst news decides: something could not be done at all, then
	// input to fix (SPEC §7: invalid lines make it 2), then an event that
	// failed, then events whose fate is not known yet.
	switch {
	case sum.Failed > 0:
		return exitFailed
	case sum.Invalid > 0:
		return exitUsage
	case sum.DeadLettered > 0:
		return exitFailed
	case sum.TimedOut > 0:
		return exitTimeout
	}
	return exitOK
}

func (p *publisher) printSummary(s batchSummary) {
	if p.json {
		printJSON(p.e.stdout, struct {
			Summary batchSummary `json:"summary"`
		}{s})
		return
	}
	line := fmt.Sprintf("summary: %d published to %s", s.Published, p.subject)
	if s.Duplicate > 0 {
		line += fmt.Sprintf(" (%d duplicates)", s.Duplicate)
	}
	if p.wait {
		line += fmt.Sprintf(", %d revoked, %d not_found, %d dead_lettered, %d timed out",
			s.Revoked, s.NotFound, s.DeadLettered, s.TimedOut)
	}
	line += fmt.Sprintf(", %d invalid %s skipped", s.Invalid, plural(s.Invalid, "line", "lines"))
	if s.Failed > 0 {
		line += fmt.Sprintf(", %d failed", s.Failed)
	}
	fmt.Fprintln(p.e.stdout, line)
}

// readLine reads one line (without its end of line). A line longer than
// max is consumed whole but returned empty with tooLong set, so one bad
// line does not end the reading.
func readLine(r *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		chunk, more, err := r.ReadLine()
		if err != nil {
			if err == io.EOF && (line != nil || tooLong) {
				return line, tooLong, nil
			}
			return nil, false, err
		}
		switch {
		case tooLong:
		case len(line)+len(chunk) > max:
			tooLong, line = true, nil
		default:
			line = append(line, chunk...)
			if line == nil {
				line = []byte{}
			}
		}
		if !more {
			return line, tooLong, nil
		}
	}
}

// checkWorkStream makes sure the work stream exists and holds subject:
// `revoker publish` creates nothing, and a clear refusal beats an event
// stored where no worker reads it. A publisher allowed only to publish
// cannot look the stream up; the publish itself then decides.
func checkWorkStream(ctx context.Context, js jetstream.JetStream, cfg config.Config, subject string) error {
	sctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	s, err := js.Stream(sctx, cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("the work stream %s does not exist; publish creates nothing: start the worker (it creates its streams) or create the stream", cfg.Stream)
	}
	if err != nil {
		return nil
	}
	if queue.Covers(s.CachedInfo().Config.Subjects, subject) {
		return nil
	}
	return fmt.Errorf("the work stream %s does not hold subject %s (it holds %s)",
		cfg.Stream, subject, strings.Join(s.CachedInfo().Config.Subjects, ", "))
}

// publishError explains a failed publish.
func publishError(cfg config.Config, subject string, err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("no stream stored the event on %s: does the work stream %s exist? (%w)", subject, cfg.Stream, err)
	}
	return err
}

// dial connects for a one-shot command. Unlike the worker it does not wait
// for an unreachable server: the operator is told at once, naming the
// server (without credentials).
func dial(cfg config.Config, e env) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("revoker-cli"),
		nats.Timeout(dialTimeout),
		nats.MaxReconnects(5),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			fmt.Fprintf(e.stderr, "revoker: nats: %v\n", err)
		}),
	}
	nc, err := nats.Connect(cfg.NATSURL, append(opts, queue.AuthOptions(cfg)...)...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", cfg.Redacted().NATSURL, err)
	}
	return nc, nil
}

// streamError explains a failed read of one of revoker's streams.
func streamError(what, stream string, err error) error {
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("the %s stream %s does not exist (a worker creates it when it starts)", what, stream)
	}
	return err
}

// checkMsgID checks a publisher-chosen event id: it becomes a header and
// part of every record and log line, so it is kept short and plain.
func checkMsgID(id string) error {
	if id == "" || len(id) > maxMsgID {
		return fmt.Errorf("must be 1-%d characters, got %d", maxMsgID, len(id))
	}
	for _, c := range []byte(id) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return fmt.Errorf("%q: only [A-Za-z0-9._:-] are allowed", id)
		}
	}
	return nil
}

// newEventID returns a UUIDv7 (RFC 9562): unique, and sorting by time of
// creation, so ids in records and logs read in publishing order.
func newEventID() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixMilli())<<16)
	_, _ = rand.Read(b[6:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x70 // version 7
	b[8] = b[8]&0x3f | 0x80 // variant 10
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func printJSON(w io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(w, "{\"error\":%q}\n", err.Error())
		return
	}
	w.Write(append(b, '\n')) //nolint:errcheck // nothing to do about a closed stdout
}

// cell makes a value safe for one line or one table cell: control
// characters (tabs, line ends, escapes) become spaces, and "" becomes "-".
func cell(s string) string {
	s = queue.OneLine(s, 1024)
	if s == "" {
		return "-"
	}
	return s
}

// lockedEnv serialises writes to stderr: the NATS client reports
// asynchronous errors from its own goroutines.
func lockedEnv(e env) env {
	e.stderr = &lockedWriter{w: e.stderr}
	return e
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
