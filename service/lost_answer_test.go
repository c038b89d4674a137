package service_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/service"
)

// TestLostStoreAnswerIsNotNotStored: the work stream stores a
// revoker.revoke request's event, and only its answer is lost (the
// connection drops). "Not stored" would be false, and a caller retrying
// without the id would store a second event (SPEC §12: the request is
// stored before anything is answered).
//   - NATS back at once: the service publishes again under the id, the
//     stream answers that it holds it, and the reply is the event queued
//     at its one sequence.
//   - NATS away for the whole store: the reply is 504, naming the id to
//     repeat the request with; the repeat finds the one event. The line
//     logged names the event and the caller's trace (SPEC §13: the event
//     may be stored, and revoked in that trace).
func TestLostStoreAnswerIsNotNotStored(t *testing.T) {
	const tid = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, away := range []bool{false, true} {
		t.Run(map[bool]string{false: "back at once", true: "away"}[away], func(t *testing.T) {
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
			revoke := func() (*nats.Msg, error) {
				m := nats.NewMsg(service.RevokeSubject)
				m.Data = []byte(evJSON("acct1", "key1"))
				m.Header.Set(jetstream.MsgIDHeader, "incident-lost-ack")
				m.Header.Set("traceparent", "00-"+tid+"-00f067aa0ba902b7-01")
				return caller.RequestMsg(m, 20*time.Second)
			}

			p.Away.Store(away)
			type answer struct {
				reply *nats.Msg
				err   error
			}
			first := make(chan answer, 1)
			go func() {
				reply, err := revoke()
				first <- answer{reply, err}
			}()
			if away {
				// Back once the service gave up storing: its reply,
				// kept meanwhile, then reaches the caller.
				queuetest.Eventually(t, 10*time.Second, "the service giving up the store", func() bool {
					return logs.FilterMessageSnippet("answer was lost").Len() > 0
				})
				p.Away.Store(false)
			}
			a := <-first
			if a.err != nil {
				t.Fatal(a.err)
			}
			reply := a.reply
			if !p.Ate.Load() || msgs() != 1 {
				t.Fatalf("answer lost: %v; the work stream holds %d events, want the one whose answer was lost", p.Ate.Load(), msgs())
			}
			if away {
				code, desc := reply.Header.Get(micro.ErrorCodeHeader), reply.Header.Get(micro.ErrorHeader)
				if code != "504" || !strings.Contains(desc, "incident-lost-ack") {
					t.Fatalf("NATS away for the whole store: answered %q %q; want 504 naming the id to repeat with", code, desc)
				}
				l := logs.FilterMessageSnippet("answer was lost").All()[0]
				if f := l.ContextMap(); f["event_id"] != "incident-lost-ack" || f["trace_id"] != tid {
					t.Errorf("%q logged with event_id %v, trace_id %v; want incident-lost-ack, %s", l.Message, f["event_id"], f["trace_id"], tid)
				}
				if reply, err = revoke(); err != nil {
					t.Fatal(err)
				}
			}
			if q := decodeQueued(t, reply); q.Sequence != 1 || q.EventID != "incident-lost-ack" || msgs() != 1 {
				t.Fatalf("answered %+v with %d events stored; want the one event, queued at sequence 1", q, msgs())
			}
		})
	}
}
