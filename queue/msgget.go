package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// storedMsg is a message as STREAM.MSG.GET answers it.
type storedMsg struct {
	Subject string    `json:"subject"`
	Seq     uint64    `json:"seq"`
	Header  []byte    `json:"hdrs"` // NATS/1.0 header block, when any
	Data    []byte    `json:"data"`
	Time    time.Time `json:"time"`
}

// msgGetRequest is the body of a STREAM.MSG.GET request.
type msgGetRequest struct {
	Seq       uint64     `json:"seq,omitempty"`
	LastFor   string     `json:"last_by_subj,omitempty"`
	NextFor   string     `json:"next_by_subj,omitempty"`
	StartTime *time.Time `json:"start_time,omitempty"`
}

// msgGet asks the stream for one message with STREAM.MSG.GET, whatever
// the stream's settings: the client would switch to a direct get on a
// stream that allows it (a key-value bucket does), and the shipped
// permissions give no role but the worker direct gets, whose answer is the
// stored bytes themselves and can be sent to any subject (deploy/nats-auth).
// It answers nil, nil when there is no such message.
func msgGet(ctx context.Context, js jetstream.JetStream, stream string, req msgGetRequest) (*storedMsg, error) {
	return msgGetOn(ctx, js.Conn(), stream, req)
}

// msgGetOn is msgGet on a connection without a JetStream context.
func msgGetOn(ctx context.Context, nc *nats.Conn, stream string, req msgGetRequest) (*storedMsg, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	msg, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, body)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", stream, err)
	}
	var resp struct {
		Message *storedMsg          `json:"message"`
		Error   *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("read stream %s: %w", stream, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, nil
	case resp.Error != nil:
		return nil, fmt.Errorf("read stream %s: %w", stream, resp.Error)
	}
	return resp.Message, nil
}

// header decodes the message's headers; none is an empty header.
func (m *storedMsg) header() nats.Header {
	if len(m.Header) == 0 {
		return nats.Header{}
	}
	h, err := nats.DecodeHeadersMsg(m.Header)
	if err != nil {
		return nats.Header{}
	}
	return h
}
