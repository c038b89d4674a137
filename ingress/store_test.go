package ingress

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestRequestStoredWhenAnotherEventHoldsItsID: a publisher stored a decoy
// for another key under the id a caller's idempotency key makes. The
// caller's request is still stored, for its own key, under an id of its
// own, and answered as usual (a 409 would be dropped by a paging tool,
// and the incident's key would stay alive); its repeat answers the same
// event, and stores nothing more.
func TestRequestStoredWhenAnotherEventHoldsItsID(t *testing.T) {
	h := newHarness(t)
	const id = "ingress:soar:INC-2"
	decoy := nats.NewMsg(h.topo.Subjects[1])
	decoy.Data = []byte(evBody(tAccount, "decoy"))
	decoy.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := h.js.PublishMsg(context.Background(), decoy); err != nil {
		t.Fatal(err)
	}

	post := func() resp {
		return h.do(h.post(evBody(tAccount, "incident", `"urgent":true`), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "INC-2"})...))
	}
	r := post()
	r.want(t, http.StatusAccepted)
	q := r.queued(t)
	if q.EventID != id || q.KeyID != "incident" || q.Subject != h.topo.Subjects[0] || q.Sequence != 2 {
		t.Fatalf("answer %+v, want the request's id %s, its key on %s, at sequence 2", q, id, h.topo.Subjects[0])
	}
	st, err := h.js.Stream(context.Background(), h.topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetMsg(context.Background(), q.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	stored := m.Header.Get(jetstream.MsgIDHeader)
	if !strings.HasPrefix(stored, id+":") || len(stored) < len(id)+20 || !bytes.Contains(m.Data, []byte(`"incident"`)) {
		t.Fatalf("stored under %q with body %s, want the incident's event under %s and a colon and a suffix nobody could guess", stored, m.Data, id)
	}
	if again := post(); again.StatusCode != http.StatusAccepted || again.queued(t).Sequence != q.Sequence {
		t.Fatalf("repeat answered %d %s, want 202 for sequence %d", again.StatusCode, again.body, q.Sequence)
	}
	h.do(h.get(r.Header.Get("Location"), bearer(tToken)...)).want(t, http.StatusAccepted)
	if n := h.msgs(); n != 2 {
		t.Fatalf("the work stream holds %d events, want 2: the decoy and the request, once", n)
	}
}

// TestLostStoreAnswerIsNeitherNotStoredNorStoredTwice: the work stream
// stores the event, and its answer is lost on the way back (the
// connection drops). The ingress does not say nothing was stored (SPEC
// §11): it answers store-unknown, a lookup of the event is not a 404, and
// the repeat the answer asks for finds the event stored once.
func TestLostStoreAnswerIsNeitherNotStoredNorStoredTwice(t *testing.T) {
	h := newHarness(t)
	p := &answerEater{target: h.ns.Addr().String(), publish: []byte(h.topo.Subjects[1] + " _INBOX"), stored: func() bool {
		st, err := h.js.Stream(context.Background(), h.topo.Stream)
		return err == nil && st.CachedInfo().State.Msgs == 1
	}}
	addr := p.listen(t)
	nc, js := queuetest.ConnectURL(t, "nats://"+addr)
	client := queue.ClientOn(nc, js, h.topo)
	client.Timeout = 2 * time.Second
	s, err := Start(context.Background(), js, Config{
		Addr: "127.0.0.1:0", Callers: tCallers(), Client: client, Subjects: h.topo.Subjects,
		Replicas: 1, Create: true, Log: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	h.base = "http://" + s.Addr()

	post := func() resp {
		return h.do(h.post(evBody(tAccount, "ackkey"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "lost-ack"})...))
	}
	post().want(t, http.StatusServiceUnavailable, KindStoreUnknown)
	if !p.ate.Load() {
		t.Fatal("the proxy never dropped the stream's answer")
	}
	if n := h.msgs(); n != 1 {
		t.Fatalf("the work stream holds %d events, want the one whose answer was lost", n)
	}
	queuetest.Eventually(t, 10*time.Second, "the ingress's connection back", nc.IsConnected)
	h.do(h.get("/v1/revocations/ingress:soar:lost-ack", bearer(tToken)...)).want(t, http.StatusAccepted)
	again := post()
	again.want(t, http.StatusAccepted)
	if q := again.queued(t); q.Sequence != 1 {
		t.Fatalf("the repeat answered %+v, want the event stored at sequence 1", q)
	}
	if n := h.msgs(); n != 1 {
		t.Fatalf("the work stream holds %d events after the repeat, want 1", n)
	}
}

// answerEater is a TCP proxy to a NATS server that, on the first
// connection carrying a publish to the work subject, forwards it, drops
// everything the server sends from then on, and cuts the connection once
// the event is stored: stored, its answer lost. Later connections pass.
type answerEater struct {
	target  string
	publish []byte
	stored  func() bool
	ate     atomic.Bool
}

func (p *answerEater) listen(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c)
		}
	}()
	return ln.Addr().String()
}

func (p *answerEater) pipe(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	var (
		eating atomic.Bool
		once   sync.Once
	)
	cut := func() { once.Do(func() { client.Close(); server.Close() }) }
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				eat := !p.ate.Load() && bytes.Contains(buf[:n], p.publish)
				if eat {
					p.ate.Store(true)
					eating.Store(true)
				}
				if _, werr := server.Write(buf[:n]); werr != nil {
					cut()
					return
				}
				if eat {
					// Cut once stored (or after 10 s: the test then
					// fails on the count).
					for deadline := time.Now().Add(10 * time.Second); !p.stored() && time.Now().Before(deadline); {
						time.Sleep(5 * time.Millisecond)
					}
					cut()
					return
				}
			}
			if err != nil {
				cut()
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 && !eating.Load() {
			if _, werr := client.Write(buf[:n]); werr != nil {
				cut()
				return
			}
		}
		if err != nil {
			cut()
			return
		}
	}
}
