package main

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/revoker/revoker/queue/queuetest"
)

var printedTrace = regexp.MustCompile(`trace ([0-9a-f]{32})\)`)

// TestPublishCarriesATrace: publish sets a lower-case traceparent on the
// event and prints its trace id, which the worker's record carries (SPEC
// §13), even with tracing off.
func TestPublishCarriesATrace(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	r := s.run("publish", "--account", "acct", "--key", "traced1")
	r.want(t, exitOK, "published")
	m := printedTrace.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no trace id printed:\n%s", r.stdout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, s.cfg().Stream)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if tp := stored.Header["traceparent"]; len(tp) != 1 || !regexp.MustCompile(`^00-`+m[1]+`-[0-9a-f]{16}-01$`).MatchString(tp[0]) {
		t.Fatalf("stored headers %v; want a lower-case traceparent of trace %s", stored.Header, m[1])
	}

	s.startWorker()
	queuetest.Eventually(t, 10*time.Second, "the record of traced1", func() bool { return len(s.outcomes("traced1")) == 1 })
	if o := s.outcomes("traced1")[0]; o.TraceID != m[1] {
		t.Fatalf("record trace_id %q, publish printed %q", o.TraceID, m[1])
	}
}

// TestDuplicatePublishPrintsTheEventsTrace: a second `publish --id X` of
// the same event is dropped by the stream as a duplicate; the trace id it
// prints is the stored event's, the one its records carry (SPEC §13), not
// a fresh one nothing carries.
func TestDuplicatePublishPrintsTheEventsTrace(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	first := s.run("publish", "--account", "acct", "--key", "dupkey", "--id", "incident-dup-1")
	first.want(t, exitOK, "published")
	second := s.run("publish", "--account", "acct", "--key", "dupkey", "--id", "incident-dup-1")
	second.want(t, exitOK, "published")
	m1, m2 := printedTrace.FindStringSubmatch(first.stdout), printedTrace.FindStringSubmatch(second.stdout)
	if m1 == nil || m2 == nil {
		t.Fatalf("no trace printed:\n%s\n%s", first.stdout, second.stdout)
	}
	if s.msgs(s.cfg().Stream) != 1 {
		t.Fatalf("the work stream holds %d events, want the one", s.msgs(s.cfg().Stream))
	}
	if m2[1] != m1[1] {
		t.Fatalf("the duplicate publish printed trace %s; the one stored event is in trace %s", m2[1], m1[1])
	}
}
