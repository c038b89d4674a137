package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/throttle"
)

// Retries of a publish nobody answered, as jetstream's defaults.
const (
	noResponderRetries = 2
	noResponderWait    = 250 * time.Millisecond
)

// pubAck is what the stream answered a publish: where it stored the
// message, or that it dropped it as a duplicate.
type pubAck struct {
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
}

// publish stores m in stream and waits for the stream's answer, as
// jetstream's PublishMsg does with WithExpectStream (and
// WithExpectLastSequencePerSubject when expectLast is not nil), without
// its options and its decoding by reflection: every event's record goes
// this way. The caller bounds ctx.
func publish(ctx context.Context, nc *nats.Conn, stream string, m *nats.Msg, expectLast *uint64) (pubAck, error) {
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	m.Header.Set(jetstream.ExpectedStreamHeader, stream)
	if expectLast != nil {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(*expectLast, 10))
	}
	resp, err := nc.RequestMsgWithContext(ctx, m)
	// As jetstream does: no responders may be a leader being elected.
	for try := 0; errors.Is(err, nats.ErrNoResponders) && try < noResponderRetries && throttle.Sleep(ctx, noResponderWait); try++ {
		resp, err = nc.RequestMsgWithContext(ctx, m)
	}
	if errors.Is(err, nats.ErrNoResponders) {
		return pubAck{}, jetstream.ErrNoStreamResponse
	}
	if err != nil {
		return pubAck{}, err
	}
	return parsePubAck(resp.Data)
}

// parsePubAck reads the stream's answer. A plain acknowledgement, the
// answer to every record written, is read by hand; anything else (an
// error, a duplicate, a shape not seen before) by encoding/json.
func parsePubAck(b []byte) (pubAck, error) {
	if seq, ok := plainAckSeq(b); ok {
		return pubAck{Seq: seq}, nil
	}
	var a struct {
		pubAck
		Stream string              `json:"stream"`
		Error  *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return pubAck{}, fmt.Errorf("%w: %v", jetstream.ErrInvalidJSAck, err)
	}
	if a.Error != nil {
		return pubAck{}, a.Error
	}
	if a.Stream == "" || a.Seq == 0 {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	return a.pubAck, nil
}

// plainAckSeq is the sequence of an answer shaped exactly as the server
// writes a plain acknowledgement, {"stream":"<name>","seq":<n>} (a domain
// may follow the stream); ok is false for any other shape.
func plainAckSeq(b []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(b, []byte(`{"stream":"`))
	if !ok {
		return 0, false
	}
	i := bytes.IndexByte(rest, '"')
	if i <= 0 || !streamName(rest[:i]) {
		return 0, false
	}
	rest = rest[i+1:]
	if d, ok := bytes.CutPrefix(rest, []byte(`,"domain":"`)); ok {
		j := bytes.IndexByte(d, '"')
		if j <= 0 || !streamName(d[:j]) {
			return 0, false
		}
		rest = d[j+1:]
	}
	digits, ok := bytes.CutPrefix(rest, []byte(`,"seq":`))
	if !ok {
		return 0, false
	}
	end := bytes.IndexByte(digits, '}')
	if end <= 0 || end != len(digits)-1 || digits[0] == '0' {
		return 0, false
	}
	seq, err := strconv.ParseUint(string(digits[:end]), 10, 64)
	if err != nil {
		return 0, false
	}
	return seq, true
}

// streamName reports whether b is made of the characters a stream or
// domain name may hold, none that JSON would escape.
func streamName(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c == '"' || c == '\\' || c == '.' || c == '*' || c == '>' || c >= 0x7f {
			return false
		}
	}
	return true
}
