package worker_test

import (
	"context"
	"testing"

	"github.com/revoker/revoker/cloudflare"
)

// TestEntryTakenAtLastDeliveryIsDeadLettered: the ledger says the event's entry is
// a newer event's (ErrEntryTaken) for a delivery of the stream as it is
// now (servers' clocks further apart than the ledger allows). On the
// delivery numbered MaxDeliver the event, never called for, must be
// dead-lettered, not given back: the consumer (MaxDeliver -1) would
// deliver it again for ever.
func TestEntryTakenAtLastDeliveryIsDeadLettered(t *testing.T) {
	h := newHarness(t, nil, []*cloudflare.Response{answer(200, revoked, 0)}...)
	h.ledger.entryTaken = true
	d := &fakeDelivery{body: goodEvent, delivered: 10, maxDeliver: 10}
	h.w.Handle(context.Background(), context.Background(), d)
	d.mu.Lock()
	defer d.mu.Unlock()
	h.records.mu.Lock()
	defer h.records.mu.Unlock()
	if len(h.records.dlq) != 1 || h.api.calls != 0 {
		t.Fatalf("delivery %d of %d: settled %v, %d calls, %d dead letters; want 1 and no call: else the event stalls", d.delivered, d.maxDeliver, d.settled, h.api.calls, len(h.records.dlq))
	}
}
