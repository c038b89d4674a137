package service_test

import (
	"context"
	"github.com/revoker/revoker/queue"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue/queuetest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/service"
)

// TestRetryAfterLostReplyStoresNoSecondEvent: the request for
// acct1/second carries an id another event holds, and is stored under an
// id of its own. The reply is lost (SPEC §12: "a reply that is lost loses
// no revocation"), so the caller repeats the request as it was: same
// Nats-Msg-Id, same body. With a random id, each repeat stored one more
// event for the key (one more DELETE, key list and record).
func TestRetryAfterLostReplyStoresNoSecondEvent(t *testing.T) {
	s := newStack(t, nil, cloudflaretest.WithLatency(2*time.Second))
	decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "first"), jetstream.MsgIDHeader, "same-id"))
	q1 := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "second"), jetstream.MsgIDHeader, "same-id"))
	// The reply q1 is lost: the caller repeats its request.
	q2 := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "second"), jetstream.MsgIDHeader, "same-id"))
	if n := s.workMsgs(); n != 2 {
		t.Errorf("work stream holds %d events after a repeated request (answers %s, %s); want 2: the repeat is the same request", n, q1.EventID, q2.EventID)
	}
	if q1.EventID != q2.EventID || !strings.HasPrefix(q1.EventID, "same-id:") {
		t.Errorf("answered %s, then %s; want one id of its own, the same for the repeat", q1.EventID, q2.EventID)
	}
}

// TestRetryOfOwnDoneEventWithoutTrail: outcome records off
// (REVOKER_OUTCOME_SUBJECT empty, SPEC §3). A request is stored and
// revoked; its reply is lost, and the caller repeats it (same id, same
// body, within the duplicate window). Nobody planted anything: the id is
// the request's own. Whether it is cannot be checked (no trail), and the
// repeat is refused (409), not stored as a second event.
func TestRetryOfOwnDoneEventWithoutTrail(t *testing.T) {
	srv, nc, js := queuetest.JetStream(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(testToken))
	t.Cleanup(api.Close)
	cfg := config.Default()
	cfg.NATSURL, cfg.APIToken, cfg.BaseURL, cfg.RateLimit = srv.ClientURL(), testToken, api.URL, 0
	cfg.OutcomeSubject = ""
	s := &stack{t: t, srv: srv, js: js, api: api, cfg: cfg}
	s.startWorker(nc)
	svc, err := service.Start(context.Background(), nc, service.Config{
		Client: queue.ClientOn(nc, js, cfg.Topology()), Subjects: cfg.Subjects, Version: "1.2.3",
		MaxWait: 10 * time.Second, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	s.caller, _ = queuetest.Connect(t, srv)
	decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "own"), jetstream.MsgIDHeader, "own-id"))
	queuetest.Eventually(t, 20*time.Second, "the event revoked and acked", func() bool {
		st, err := s.js.Stream(context.Background(), s.cfg.Stream)
		if err != nil {
			return false
		}
		info, err := st.Info(context.Background())
		return err == nil && info.State.Msgs == 0 && info.State.LastSeq == 1
	})
	reply := s.request(service.RevokeSubject, evJSON("acct1", "own"), jetstream.MsgIDHeader, "own-id")
	if n := s.workMsgs(); n != 1 {
		t.Errorf("the repeated request (answered %q, error %q) stored event %d; want the first one only", reply.Data, serviceError(reply), n)
	}
}
