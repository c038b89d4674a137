package tracing

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// eventKey carries an event's identity to the id generator.
type eventKey struct{}

// ForEvent marks ctx as working on the event named by identity, so that a
// trace started for an event that brought no trace context gets a trace id
// derived from identity: every delivery of the event, on every replica,
// then lands in one trace (§13), and a ratio sampler, which decides on the
// trace id, decides the same way each time. identity must name the event the
// same way on every delivery and never name another: the stream, the
// sequence and the time the stream stored the message together do (a stream
// made again reuses sequences, never times). A trace context the event
// carries wins over identity.
func ForEvent(ctx context.Context, identity string) context.Context {
	if identity == "" {
		return ctx
	}
	return context.WithValue(ctx, eventKey{}, identity)
}

// EventTraceID is the trace id ForEvent gives an event with identity.
func EventTraceID(identity string) trace.TraceID {
	sum := sha256.Sum256([]byte("revoker trace\x00" + identity))
	var id trace.TraceID
	copy(id[:], sum[:len(id)])
	if !id.IsValid() {
		id[len(id)-1] = 1 // all zeros is not a trace id
	}
	return id
}

// IDGenerator returns the id generator of Setup's providers: random ids,
// except a new trace's id in a context marked by ForEvent.
func IDGenerator() sdktrace.IDGenerator { return eventIDs{} }

type eventIDs struct{}

var _ sdktrace.IDGenerator = eventIDs{}

func (eventIDs) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if identity, ok := ctx.Value(eventKey{}).(string); ok {
		return EventTraceID(identity), newSpanID()
	}
	var tid trace.TraceID
	for !tid.IsValid() {
		binary.BigEndian.PutUint64(tid[:8], rand.Uint64())
		binary.BigEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid, newSpanID()
}

func (eventIDs) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return newSpanID() }

// newSpanID uses math/rand/v2's top-level generator, which is seeded per
// process from the system and safe for concurrent use.
func newSpanID() trace.SpanID {
	var sid trace.SpanID
	for !sid.IsValid() {
		binary.BigEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}
