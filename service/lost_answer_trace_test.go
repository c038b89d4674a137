package service_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/service"
)

// TestLostStoreAnswerLogNamesTheEventAndTrace: a revoker.revoke request
// carrying a traceparent whose store went unanswered (NATS away for the
// whole store: 504) is logged; the line is about the event, which may be
// stored and will then be revoked in the caller's trace, so it names the
// event and its trace (SPEC §13: "the trace id goes into ... every log
// line about the event").
func TestLostStoreAnswerLogNamesTheEventAndTrace(t *testing.T) {
	const tid = "4bf92f3577b34da6a3ce929d0e0e4736"
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	topo := config.Default().Topology()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, topo, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	msgs := func() uint64 {
		st, err := js.Stream(ctx, topo.Stream)
		if err != nil {
			return 0
		}
		info, err := st.Info(ctx)
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}
	subject := topo.Subjects[len(topo.Subjects)-1]
	p := &queuetest.AnswerEater{Target: srv.Addr().String(), Publish: []byte("PUB " + subject + " _INBOX"),
		Stored: func() bool { return msgs() == 1 }}
	nc, pjs := queuetest.ConnectURL(t, "nats://"+p.Listen(t))
	client := queue.ClientOn(nc, pjs, topo)
	client.Timeout = time.Second
	service.SetStoreTimeout(t, 3*time.Second)
	core, logs := observer.New(zap.WarnLevel)
	svc, err := service.Start(context.Background(), nc, service.Config{
		Client: client, Subjects: topo.Subjects, Version: "1.2.3", Log: zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	caller, _ := queuetest.Connect(t, srv)
	p.Away.Store(true)
	done := make(chan error, 1)
	go func() {
		m := nats.NewMsg(service.RevokeSubject)
		m.Data = []byte(evJSON("acct1", "key1"))
		m.Header.Set(jetstream.MsgIDHeader, "incident-lost-trace")
		m.Header.Set("traceparent", "00-"+tid+"-00f067aa0ba902b7-01")
		_, err := caller.RequestMsg(m, 20*time.Second)
		done <- err
	}()
	queuetest.Eventually(t, 10*time.Second, "the service giving up the store", func() bool {
		return logs.FilterMessageSnippet("answer was lost").Len() > 0
	})
	p.Away.Store(false)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l := logs.FilterMessageSnippet("answer was lost").All()[0]
	f := l.ContextMap()
	if f["event_id"] != "incident-lost-trace" || f["trace_id"] != tid {
		t.Fatalf("%q logged with event_id %v, trace_id %v; want incident-lost-trace, %s", l.Message, f["event_id"], f["trace_id"], tid)
	}
}
