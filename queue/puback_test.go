package queue

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

func TestParsePubAck(t *testing.T) {
	for _, tc := range []struct {
		body      string
		seq       uint64
		duplicate bool
		code      jetstream.ErrorCode // of an API error; 0: none
		bad       bool                // not an acknowledgement at all
	}{
		{body: `{"stream":"REVOCATION_OUTCOMES","seq":42}`, seq: 42},
		{body: `{"stream":"S","domain":"hub","seq":7}`, seq: 7},
		{body: `{"stream":"S","seq":7,"duplicate":true}`, seq: 7, duplicate: true},
		{body: `{"seq":9, "stream":"S"}`, seq: 9},
		{body: `{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"},"stream":"S","seq":0}`, code: 10071},
		{body: `{"stream":"S","seq":0}`, bad: true},
		{body: `{"stream":"","seq":4}`, bad: true},
		{body: `not json`, bad: true},
		{body: ``, bad: true},
	} {
		got, err := parsePubAck([]byte(tc.body))
		var apiErr *jetstream.APIError
		switch {
		case tc.code != 0:
			if !errors.As(err, &apiErr) || apiErr.ErrorCode != tc.code {
				t.Errorf("%s: error %v, want API error %d", tc.body, err, tc.code)
			}
		case tc.bad:
			if !errors.Is(err, jetstream.ErrInvalidJSAck) {
				t.Errorf("%s: %+v, %v; want an invalid acknowledgement", tc.body, got, err)
			}
		case err != nil || got.Seq != tc.seq || got.Duplicate != tc.duplicate:
			t.Errorf("%s: %+v, %v; want seq %d duplicate %v", tc.body, got, err, tc.seq, tc.duplicate)
		}
	}
}

// FuzzPlainAck: whatever the hand reading accepts, encoding/json reads
// the same way: a plain acknowledgement of that sequence, no duplicate,
// no error.
func FuzzPlainAck(f *testing.F) {
	for _, s := range []string{
		`{"stream":"S","seq":42}`, `{"stream":"S","domain":"d","seq":1}`, `{"stream":"S","seq":1,"duplicate":true}`,
		`{"stream":"S\u0022","seq":1}`, `{"stream":"S","seq":01}`, `{"stream":"S","seq":18446744073709551616}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, ok := plainAckSeq(b)
		if !ok {
			return
		}
		var a struct {
			Stream    string              `json:"stream"`
			Seq       uint64              `json:"seq"`
			Duplicate bool                `json:"duplicate"`
			Error     *jetstream.APIError `json:"error"`
		}
		if err := json.Unmarshal(b, &a); err != nil || a.Seq != seq || a.Duplicate || a.Error != nil || a.Stream == "" {
			t.Fatalf("%q: read by hand as seq %d; encoding/json reads %+v (%v)", b, seq, a, err)
		}
	})
}
