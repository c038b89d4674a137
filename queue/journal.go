package queue

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/worker"
)

// The journal is the ledger's write-ahead for first calls. Every call is
// stored before it is made (SPEC §4, "The proof", point 2), and on the
// common path — a delivery that knows of no earlier call — one write of
// its own per call would double the writes of the whole drain. So the
// first calls that start together share one write: a message of the
// ledger's bucket listing them, under a key of their events' sequence
// range, which a later delivery of any of them reads. Later calls, rare,
// go through the entry's compare-and-swap as before.

// journalRange is how many sequences of a work stream share a journal key
// prefix: a later delivery reads the journal messages of its range.
const journalRange = 64

// Bounds of what the journal holds, so that reading a range stays cheap
// and a value read back is clamped to what a worker could have written
// (SPEC §4, "The proof", point 8).
const (
	maxJournalMsgs  = 4096 // messages under one range
	maxJournalCalls = 4096 // calls in one message
)

// journalWriteTimeout bounds one journal write; it serves every call in it.
const journalWriteTimeout = 5 * time.Second

// journalCall is one first call in a journal message.
type journalCall struct {
	Seq     uint64    `json:"seq"`
	Account string    `json:"account"`
	Key     string    `json:"key"`
	Stored  time.Time `json:"stored,omitzero"`
	// Count is the call's number as its delivery knew it: 1, a first
	// call. Each entry is one call, whatever it says.
	Count int `json:"count"`
}

// journalMsg is the body of one journal message.
type journalMsg struct {
	Replica string        `json:"replica,omitempty"`
	Calls   []journalCall `json:"calls"`
}

// appendJSON appends m as encoding/json encodes it, and fails where it
// fails: a journal write is on the path of every first call, and
// reflection was most of its cost.
func (m *journalMsg) appendJSON(b []byte) ([]byte, error) {
	for _, c := range m.Calls {
		if y := c.Stored.Year(); y < 0 || y > 9999 || c.Stored.Location() != time.UTC && !c.Stored.IsZero() {
			// Times encoding/json refuses, or might (a zone's offset):
			// its own answer. A stored time is the server's, in UTC.
			return json.Marshal(m)
		}
	}
	b = append(b, '{')
	if m.Replica != "" {
		b = append(event.AppendJSONString(append(b, `"replica":`...), m.Replica), ',')
	}
	if m.Calls == nil {
		return append(b, `"calls":null}`...), nil
	}
	b = append(b, `"calls":[`...)
	for i, c := range m.Calls {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(append(b, `{"seq":`...), c.Seq, 10)
		b = event.AppendJSONString(append(b, `,"account":`...), c.Account)
		b = event.AppendJSONString(append(b, `,"key":`...), c.Key)
		if !c.Stored.IsZero() {
			b = append(c.Stored.AppendFormat(append(b, `,"stored":"`...), time.RFC3339Nano), '"')
		}
		b = append(strconv.AppendInt(append(b, `,"count":`...), int64(c.Count), 10), '}')
	}
	return append(b, "]}"...), nil
}

// announced is one call waiting for its journal write.
type announced struct {
	ref  worker.Ref
	done chan error
}

// journal gathers the first calls announced while a write is under way
// into the next write: the more calls start at once, the fewer writes.
type journal struct {
	mu      sync.Mutex
	pending []announced
	writing bool
}

// ledgerSubject is the subject of key in the ledger's bucket, as the
// bucket's own writes use it.
func ledgerSubject(key string) string { return "$KV." + LedgerBucket + "." + key }

func journalPrefix(stream string, seq uint64) string {
	return "calls." + stream + "." + strconv.FormatUint(seq/journalRange, 10)
}

// Announce stores that a delivery knowing of no earlier call of ref's event
// is about to make its first call, in one write shared with the first
// calls starting meanwhile, and returns once it is stored. An error means
// it may not be: then no call may be made. If ctx ends first, the entry may
// still be stored: a call counted, never made, is one unanswered call more,
// never one less.
func (l *Ledger) Announce(ctx context.Context, ref worker.Ref) error {
	if l.kv.Load() == nil {
		return errLedgerUnbound
	}
	a := announced{ref: ref, done: make(chan error, 1)}
	j := &l.journal
	j.mu.Lock()
	j.pending = append(j.pending, a)
	start := !j.writing
	j.writing = true
	j.mu.Unlock()
	if start {
		go l.writeJournal()
	}
	select {
	case err := <-a.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writeJournal writes what is pending, one message per range, until
// nothing is.
func (l *Ledger) writeJournal() {
	j := &l.journal
	for {
		j.mu.Lock()
		batch := j.pending
		j.pending = nil
		if len(batch) == 0 {
			j.writing = false
			j.mu.Unlock()
			return
		}
		j.mu.Unlock()

		// The ranges' writes go out together: each call waits for one
		// round trip, not one per range before its own. The first is
		// written here, the others (rarer) each from a goroutine of its own.
		groups := groupByRange(batch)
		ctx, cancel := context.WithTimeout(context.Background(), journalWriteTimeout)
		var wg sync.WaitGroup
		for _, g := range groups[1:] {
			wg.Go(func() { l.putJournal(ctx, g) })
		}
		l.putJournal(ctx, groups[0])
		wg.Wait()
		cancel()
	}
}

// rangeGroup is the announcements of one journal key prefix.
type rangeGroup struct {
	prefix string
	calls  []announced
}

// groupByRange groups a batch by journal key prefix, in the order of its
// first announcements.
func groupByRange(batch []announced) []rangeGroup {
	var groups []rangeGroup
next:
	for _, a := range batch {
		p := journalPrefix(a.ref.Stream, a.ref.Seq)
		for i := range groups {
			if groups[i].prefix == p {
				groups[i].calls = append(groups[i].calls, a)
				continue next
			}
		}
		groups = append(groups, rangeGroup{prefix: p, calls: []announced{a}})
	}
	return groups
}

// putJournal stores one message of g's first calls under a new key of its
// prefix, and tells each call how that went.
func (l *Ledger) putJournal(ctx context.Context, g rangeGroup) {
	err := l.storeJournal(ctx, g)
	for _, a := range g.calls {
		a.done <- err
	}
}

func (l *Ledger) storeJournal(ctx context.Context, g rangeGroup) error {
	js := l.js.Load()
	if js == nil {
		return errLedgerUnbound
	}
	m := journalMsg{Replica: l.Replica, Calls: make([]journalCall, len(g.calls))}
	for i, a := range g.calls {
		m.Calls[i] = journalCall{Seq: a.ref.Seq, Account: a.ref.Account, Key: a.ref.Key, Count: 1}
		if !a.ref.Stored.IsZero() {
			m.Calls[i].Stored = a.ref.Stored.UTC()
		}
	}
	b, err := m.appendJSON(make([]byte, 0, 32+len(m.Replica)+len(g.calls)*128))
	if err != nil {
		return fmt.Errorf("write ledger journal: %w", err)
	}
	// A key of its own: a write retried after a lost answer replaces
	// itself, never another replica's. Written as KeyValue.Put writes it,
	// but with the answer read by hand (publish): its decoding by
	// reflection was most of the writer's cost.
	msg := &nats.Msg{Subject: ledgerSubject(g.prefix + "." + rand.Text()), Data: b}
	if _, err := publish(ctx, (*js).Conn(), "KV_"+LedgerBucket, msg, nil); err != nil {
		return fmt.Errorf("write ledger journal: %w", err)
	}
	return nil
}

// journaled counts the first calls the journal holds for ref's event:
// those naming its sequence, account, key and storing time.
func (l *Ledger) journaled(ctx context.Context, ref worker.Ref) (int, error) {
	js := l.js.Load()
	if js == nil {
		return 0, errLedgerUnbound
	}
	filter := ledgerSubject(journalPrefix(ref.Stream, ref.Seq) + ".*")
	n := 0
	next := uint64(0)
	for range maxJournalMsgs {
		m, err := msgGet(ctx, *js, "KV_"+LedgerBucket, msgGetRequest{Seq: next, NextFor: filter})
		if err != nil {
			return 0, fmt.Errorf("read ledger journal: %w", err)
		}
		if m == nil {
			return n, nil
		}
		n += countJournaled(m.Data, ref)
		next = m.Seq + 1
	}
	return 0, errors.New("read ledger journal: more messages under one range than any worker writes")
}

// countJournaled counts ref's calls in one journal message; a message that
// does not parse (a delete marker among them) counts none.
func countJournaled(b []byte, ref worker.Ref) int {
	var m journalMsg
	if len(b) == 0 || json.Unmarshal(b, &m) != nil {
		return 0
	}
	n := 0
	for _, c := range m.Calls[:min(len(m.Calls), maxJournalCalls)] {
		if c.Seq == ref.Seq && c.Account == ref.Account && c.Key == ref.Key &&
			(ref.Stored.IsZero() || c.Stored.IsZero() || c.Stored.Equal(ref.Stored)) {
			n++
		}
	}
	return n
}
