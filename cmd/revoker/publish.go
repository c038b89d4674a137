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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
)

// Bounds of the one-shot commands: they report a problem instead of
// retrying forever as the worker does.
const maxMsgID = 128

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
	// The publish span goes where the worker's go (SPEC §13), when the
	// standard OTEL variables say where.
	stopTracing, err := tracing.Setup(ctx, "revoker", version)
	if err != nil {
		return usageErr("%v", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = stopTracing(sctx)
	}()

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
			return usageErr("--wait needs outcome records, but %s is empty (outcome records are off)", settingName(fs, "REVOKER_OUTCOME_SUBJECT"))
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
	ev := event.Event{
		AccountID: *account, KeyID: *key, Reason: *reason, RequestedBy: *requestedBy,
		RequestedAt: time.Now().UTC().Truncate(time.Millisecond),
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return usageErr("%v", err)
	}
	// The worker's own rules decide, so nothing is published that the
	// worker would refuse.
	if _, err := event.Decode(body); err != nil {
		return usageErr("%v; nothing published", err)
	}
	return p.one(ctx, msgID, ev, body)
}

// publisher holds what both forms of `revoker publish` share.
type publisher struct {
	cfg     config.Config
	e       env
	subject string
	wait    bool
	timeout time.Duration
	json    bool

	c *queue.Client
}

// open connects and checks the work stream.
func (p *publisher) open(ctx context.Context) error {
	c, err := dial(p.cfg, p.e)
	if err != nil {
		return err
	}
	p.c = c
	return c.CheckSubject(ctx, p.subject)
}

func (p *publisher) close() {
	if p.c != nil {
		p.c.Close()
	}
}

// published is the acknowledgement of one event, as printed.
type published struct {
	Line int `json:"line,omitempty"`
	queue.Published
}

func (p *publisher) one(ctx context.Context, id string, ev event.Event, body []byte) int {
	e := p.e
	defer p.close()
	if err := p.open(ctx); err != nil {
		fmt.Fprintf(e.stderr, "revoker publish: %v\n", err)
		return exitFailed
	}
	var w *queue.Watcher
	if p.wait {
		// Listening on the key's own subject before publishing: a fast
		// worker's record cannot be missed.
		var err error
		if w, err = p.c.Watch(ev.AccountID, ev.KeyID); err != nil {
			fmt.Fprintf(e.stderr, "revoker publish: %v\n", err)
			return exitFailed
		}
		defer w.Close()
	}
	pub, err := p.c.Publish(ctx, p.subject, id, ev, body)
	if err != nil && !queue.Refused(err) && !errors.Is(err, queue.ErrIDUnverified) {
		// No answer proves nothing: the event may be stored. Published
		// again under its id, the stream drops it if it is.
		fmt.Fprintf(e.stderr, "revoker publish: event %s may have been stored, its acknowledgement not heard (%v); to be sure, publish it again with --id %s\n",
			id, err, id)
		return exitFailed
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker publish: %v\n", err)
		return exitFailed
	}
	if p.json {
		printJSON(e.stdout, published{Published: pub})
	} else {
		fmt.Fprintf(e.stdout, "published %s to %s (stream %s, sequence %d, trace %s)\n", id, p.subject, pub.Stream, pub.Sequence, traceOrNone(pub.TraceID))
	}
	if pub.Duplicate {
		fmt.Fprintf(e.stderr, "revoker publish: the work stream already had an event with id %s (duplicate window %s): not published again; if that event was not for %s/%s, publish this one under another id\n",
			id, queue.DuplicateWindow, cell(ev.AccountID), cell(ev.KeyID))
	}
	if !p.wait {
		return exitOK
	}

	var got *event.Record
	want := map[uint64]queue.Published{pub.Sequence: pub}
	err = w.Await(ctx, want, time.Now().Add(p.timeout), func(_ queue.Published, rec event.Record) { got = &rec })
	if err != nil && got == nil {
		// Published, its outcome not known: 3, as a wait that ran out
		// (SPEC §7: 1 says dead-lettered).
		fmt.Fprintf(e.stderr, "revoker publish: waiting for the outcome: %v; event %s is published and will be processed when a worker takes it (later: revoker outcomes --key %s)\n",
			err, id, ev.KeyID)
		return exitTimeout
	}
	if got == nil {
		fmt.Fprintf(e.stderr, "revoker publish: no outcome for event %s within %s; it is published and will be processed when a worker takes it (later: revoker outcomes --key %s)\n",
			id, p.timeout, ev.KeyID)
		return exitTimeout
	}
	p.printOutcome(0, *got)
	if got.Outcome == event.DeadLettered {
		fmt.Fprintf(e.stderr, "revoker publish: event %s was dead-lettered (%s); see: revoker dlq list --reason %s\n",
			id, cell(string(got.Reason)), cell(string(got.Reason)))
	}
	return outcomeStatus(got.Outcome)
}

// outcomeStatus is the exit status of `publish --wait` for an outcome.
func outcomeStatus(o event.Outcome) int {
	if o.Succeeded() {
		return exitOK
	}
	return exitFailed
}

// lineOutcome is an outcome record with the line of the batch it answers.
type lineOutcome struct {
	Line int `json:"line,omitempty"`
	event.Record
}

// timedOut stands in the printed outcomes for an event without one.
const timedOut event.Outcome = "timeout"

func (p *publisher) printOutcome(line int, o event.Record) {
	if p.json {
		printJSON(p.e.stdout, lineOutcome{Line: line, Record: o})
		return
	}
	var b strings.Builder
	if line > 0 {
		fmt.Fprintf(&b, "line %d: ", line)
	}
	b.WriteString(cell(string(o.Outcome)))
	if o.Reason != "" {
		fmt.Fprintf(&b, " reason=%s", cell(string(o.Reason)))
	}
	fmt.Fprintf(&b, " account=%s key=%s", cell(o.AccountID), cell(o.KeyID))
	if o.Outcome != timedOut {
		fmt.Fprintf(&b, " status=%d attempts=%d cf_ray=%s completed_at=%s", o.Status, o.Attempts, cell(o.CFRay), cell(o.CompletedAt))
	}
	fmt.Fprintf(&b, " event_id=%s", cell(o.EventID))
	if o.TraceID != "" {
		fmt.Fprintf(&b, " trace_id=%s", cell(o.TraceID))
	}
	fmt.Fprintln(p.e.stdout, b.String())
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
		if err == nil {
			if st, serr := f.Stat(); serr == nil && st.IsDir() {
				f.Close()
				err = fmt.Errorf("%q is a directory", file)
			}
		}
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
	var w *queue.Watcher
	if p.wait {
		var err error
		if w, err = p.c.Watch("", ""); err != nil {
			fmt.Fprintf(e.stderr, "revoker publish: %v\n", err)
			return exitFailed
		}
		defer w.Close()
	}

	var (
		sum    batchSummary
		events []queue.Published
		lines  = map[string]int{} // event id -> line
	)
	b := p.c.NewBatch(p.subject, func(pub queue.Published, err error) {
		switch {
		case err != nil && queue.Refused(err):
			sum.Failed++
			fmt.Fprintf(e.stderr, "line %d: not published: %v\n", lines[pub.EventID], err)
			return
		case err != nil:
			// No answer proves nothing: the event may be stored. Published
			// again under its id, the stream drops it if it is.
			sum.Failed++
			fmt.Fprintf(e.stderr, "line %d: not known whether it was stored (%v); to be sure, publish it again with --id %s\n",
				lines[pub.EventID], err, pub.EventID)
			return
		}
		sum.Published++
		if pub.Duplicate {
			sum.Duplicate++
		}
		events = append(events, pub)
		switch {
		case p.wait: // each line's outcome is printed instead
		case p.json:
			printJSON(e.stdout, published{Line: lines[pub.EventID], Published: pub})
		case pub.Duplicate:
			fmt.Fprintf(e.stdout, "line %d: duplicate of the event %s already stored (sequence %d)\n", lines[pub.EventID], pub.EventID, pub.Sequence)
		default:
			// Each event's id and trace, for the incident's tooling to
			// follow (SPEC §13).
			fmt.Fprintf(e.stdout, "line %d: published %s (sequence %d, trace %s)\n", lines[pub.EventID], pub.EventID, pub.Sequence, traceOrNone(pub.TraceID))
		}
	})

	var (
		readErr error
		n       int // the line number
	)
	next := readLines(ctx, in)
	for ctx.Err() == nil {
		n++
		var l readResult
		select {
		case l = <-next:
		case <-ctx.Done():
			// The input may never end (a terminal, a pipe held open): an
			// interrupt does not wait for its next line.
			continue
		}
		line, tooLong, err := l.line, l.tooLong, l.err
		if err != nil {
			if err != io.EOF {
				readErr = err
			}
			break
		}
		if n == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		// White space around the event is fine (SPEC §2): the size that
		// counts is the event's.
		line = bytes.TrimSpace(line)
		if len(line) == 0 && !tooLong {
			continue
		}
		sum.Lines++
		if tooLong || len(line) > event.MaxBytes {
			sum.Invalid++
			fmt.Fprintf(e.stderr, "line %d: invalid event: more than %d bytes; skipped\n", n, event.MaxBytes)
			continue
		}
		ev, err := event.Decode(line)
		if err != nil {
			sum.Invalid++
			fmt.Fprintf(e.stderr, "line %d: %v; skipped\n", n, err)
			continue
		}
		id := newEventID()
		lines[id] = n
		b.Add(ctx, id, ev, line)
	}
	b.Wait(ctx)
	if readErr != nil {
		fmt.Fprintf(e.stderr, "revoker publish: reading %s: %v; the lines from line %d on were not read\n", file, readErr, n)
		sum.Failed++
	}
	if ctx.Err() != nil {
		fmt.Fprintln(e.stderr, "revoker publish: interrupted; the rest of the input was not published")
		sum.Failed++
	}

	if p.wait && len(events) > 0 && ctx.Err() == nil {
		want := make(map[uint64]queue.Published, len(events))
		for _, pub := range events {
			want[pub.Sequence] = pub
		}
		err := w.Await(ctx, want, time.Now().Add(p.timeout), func(pub queue.Published, o event.Record) {
			switch o.Outcome {
			case event.Revoked:
				sum.Revoked++
			case event.NotFound:
				sum.NotFound++
			default:
				sum.DeadLettered++
			}
			p.printOutcome(lines[pub.EventID], o)
		})
		if err != nil {
			// The events still waiting are published, their outcomes not
			// known: counted as timed out below (exit 3), not failed.
			fmt.Fprintf(e.stderr, "revoker publish: waiting for outcomes: %v\n", err)
		}
		for _, pub := range events { // in line order
			if _, left := want[pub.Sequence]; left {
				sum.TimedOut++
				p.printOutcome(lines[pub.EventID], event.Record{EventID: pub.EventID, AccountID: pub.AccountID, KeyID: pub.KeyID,
					Outcome: timedOut, TraceID: pub.TraceID})
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

// maxLine is the longest line read whole: an event of event.MaxBytes with
// as much white space (and a byte order mark) around it.
const maxLine = 2*event.MaxBytes + 3

// readResult is one line read, as readLine returns it.
type readResult struct {
	line    []byte
	tooLong bool
	err     error
}

// readLines reads in's lines (readLine, at most maxLine bytes each) in a
// goroutine of its own, one at a time as they are taken, until an error
// or the end of ctx; the last thing sent is the error (io.EOF at the end).
func readLines(ctx context.Context, in io.Reader) <-chan readResult {
	out := make(chan readResult)
	go func() {
		r := bufio.NewReaderSize(in, 64<<10)
		for {
			line, tooLong, err := readLine(r, maxLine)
			select {
			case out <- readResult{line, tooLong, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return out
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

// dial connects for a one-shot command. Unlike the worker it does not wait
// for an unreachable server: the operator is told at once, naming the
// server (without credentials).
func dial(cfg config.Config, e env) (*queue.Client, error) {
	c, err := queue.Dial(cfg.Connection(), cfg.Topology(), func(err error) { fmt.Fprintf(e.stderr, "revoker: nats: %v\n", err) })
	if err == nil {
		// What is on a key's subject but not its record is said, as
		// outcomes says it (SPEC §4, "The proof", point 8).
		c.Stray = func(s queue.Stray) { fmt.Fprintf(e.stderr, "revoker: %s\n", strayLine(s)) }
	}
	return c, err
}

// dialFor is dial for the command named cmd, which reports a failure
// itself; nil means it did.
func dialFor(cmd string, cfg config.Config, e env) *queue.Client {
	c, err := dial(cfg, e)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v\n", cmd, err)
		return nil
	}
	return c
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
	// Escaped, so no control or bidirectional character from an event or
	// an answer reaches the terminal raw.
	w.Write(append(untrusted.EscapeJSON(b), '\n')) //nolint:errcheck // nothing to do about a closed stdout
}

// cell makes a value safe for one line or one table cell: control
// characters (tabs, line ends, escapes) become spaces, and "" becomes "-".
func cell(s string) string {
	s = untrusted.Line(s, 1024)
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

// traceOrNone is a trace id as printed: "none" for an event stored without
// one (a duplicate of an event another publisher stored untraced).
func traceOrNone(id string) string {
	if id == "" {
		return "none"
	}
	return cell(id) // read back from the stream: shown as any stored field is (SPEC §10)
}
