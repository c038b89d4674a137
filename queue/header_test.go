package queue

import (
	"testing"

	"github.com/nats-io/nats.go"
)

// TestHeaderFoldReadsOneSpelling: a message holding a header under two
// spellings but not the one asked for is read the same way every time, by
// every reader: the first spelling in byte order. The check of a taken id
// and the worker then agree on what the message is.
func TestHeaderFoldReadsOneSpelling(t *testing.T) {
	h := nats.Header{"content-type": {"application/json"}, "CONTENT-TYPE": {"application/cloudevents+json"}}
	for range 200 {
		if got := HeaderFold(h, "Content-Type"); got != "application/cloudevents+json" {
			t.Fatalf("HeaderFold = %q, want the value under CONTENT-TYPE, first in byte order", got)
		}
	}
	h["Content-Type"] = []string{"text/plain"}
	if got := HeaderFold(h, "Content-Type"); got != "text/plain" {
		t.Fatalf("HeaderFold = %q, want the value under the spelling asked for", got)
	}
}
