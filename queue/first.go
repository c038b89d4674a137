package queue

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/worker"
)

var _ worker.FirstRecords = (*Records)(nil)

// errNoAnswer: the outcome stream did not answer a first record in time.
var errNoAnswer = errors.New("the outcome stream did not answer in time")

// firstAnswers carries the outcome stream's answers to first records
// (FirstOutcome) to the writes waiting for them, on the goroutine of one
// subscription: there a stored record's event is acked and logged, one
// after another as the answers are read, rather than on a goroutine woken
// for each.
type firstAnswers struct {
	mu      sync.Mutex
	nc      *nats.Conn
	prefix  string // <inbox>.: a write's reply subject is the prefix and its number
	next    uint64
	waiting map[string]firstWrite
	status  chan nats.Status
}

// firstWrite is one first record waiting for its answer until due.
type firstWrite struct {
	then func(error)
	due  time.Time
}

// firstSweep is how often the writes waiting past their time are failed:
// one ticker for them all, not a timer for each record.
const firstSweep = 250 * time.Millisecond

// FirstOutcome stores rec as the first record on its key's subject: the
// write expects the subject to hold none, as Outcome's first write does.
// then is called once: with nil, on the goroutine that reads the stream's
// answers, once rec is stored; with an error when it is not known to be (a
// record of the key is there already, the stream refused it, no answer
// within Timeout, the connection dropped meanwhile), and the caller then
// writes it with Outcome, which reads what is there. It reports false,
// calling nothing, when rec cannot go this way: records off, an event
// without a valid key, or a publish that failed at once.
func (r *Records) FirstOutcome(rec event.Record, then func(error)) bool {
	if r.OutcomePrefix == "" || r.Timeout <= 0 || !cloudflare.ValidIdentifier(rec.AccountID) || !cloudflare.ValidIdentifier(rec.KeyID) {
		return false
	}
	nc := r.JS.Conn()
	m := OutcomeMsg(r.OutcomePrefix, rec)
	m.Header.Set(jetstream.ExpectedStreamHeader, r.OutcomeStream)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	a := &r.first
	a.mu.Lock()
	if a.nc != nc {
		if err := a.follow(nc); err != nil {
			a.mu.Unlock()
			return false
		}
	}
	a.next++
	m.Reply = a.prefix + strconv.FormatUint(a.next, 10)
	reply := m.Reply
	a.waiting[reply] = firstWrite{then: then, due: time.Now().Add(r.Timeout)}
	a.mu.Unlock()
	if err := nc.PublishMsg(m); err != nil {
		if _, ok := a.take(reply); ok {
			return false
		}
		return true // answered meanwhile: then was called
	}
	return true
}

// follow starts taking answers on nc: one subscription, and a listener that
// fails the writes waiting when nc drops, as nats.go fails its requests
// (the answers owed are lost with the connection). a.mu is held.
func (a *firstAnswers) follow(nc *nats.Conn) error {
	prefix := nc.NewInbox() + "."
	if _, err := nc.Subscribe(prefix+"*", func(m *nats.Msg) { a.answer(m.Subject, firstStored(m)) }); err != nil {
		return err
	}
	if a.status != nil {
		a.nc.RemoveStatusListener(a.status)
	}
	a.nc, a.prefix, a.status = nc, prefix, nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	if a.waiting == nil {
		a.waiting = map[string]firstWrite{}
	}
	go a.watch(nc, a.status)
	go a.sweep(nc)
	return nil
}

// sweep fails the writes waiting past their time, until nc is closed or
// no longer followed.
func (a *firstAnswers) sweep(nc *nats.Conn) {
	t := time.NewTicker(firstSweep)
	defer t.Stop()
	for now := range t.C {
		var late []firstWrite
		a.mu.Lock()
		if a.nc != nc || nc.IsClosed() {
			a.mu.Unlock()
			return
		}
		for reply, w := range a.waiting {
			if now.After(w.due) {
				late = append(late, w)
				delete(a.waiting, reply)
			}
		}
		a.mu.Unlock()
		for _, w := range late {
			w.then(errNoAnswer)
		}
	}
}

// watch fails the writes waiting at each drop of nc, until nc is closed or
// no longer followed.
func (a *firstAnswers) watch(nc *nats.Conn, status chan nats.Status) {
	for st := range status {
		a.mu.Lock()
		if a.nc != nc {
			a.mu.Unlock()
			return
		}
		waiting := a.waiting
		a.waiting = map[string]firstWrite{}
		a.mu.Unlock()
		for _, w := range waiting {
			w.then(nats.ErrDisconnected)
		}
		if st == nats.CLOSED {
			return
		}
	}
}

// firstStored reads the stream's answer to a first record: nil when it
// stored it, plainly; an error for anything else.
func firstStored(m *nats.Msg) error {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return jetstream.ErrNoStreamResponse
	}
	ack, err := parsePubAck(m.Data)
	if err == nil && ack.Duplicate {
		err = errors.New("the outcome stream took the first record for a duplicate")
	}
	return err
}

// answer ends the write waiting under reply with err, unless it has ended.
func (a *firstAnswers) answer(reply string, err error) {
	if w, ok := a.take(reply); ok {
		w.then(err)
	}
}

// take removes the write waiting under reply.
func (a *firstAnswers) take(reply string) (firstWrite, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, ok := a.waiting[reply]
	if ok {
		delete(a.waiting, reply)
	}
	return w, ok
}
