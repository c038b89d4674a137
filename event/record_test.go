package event_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/revoker/revoker/event"
)

// fill sets every field of a Record: strings to s, numbers to n (0 leaves
// them empty, as the omitempty tags see them).
func fill(s string, n uint64) event.Record {
	var r event.Record
	v := reflect.ValueOf(&r).Elem()
	for i := range v.NumField() {
		switch f := v.Field(i); f.Kind() {
		case reflect.String:
			f.SetString(s)
		case reflect.Int:
			f.SetInt(int64(n))
		case reflect.Uint64:
			f.SetUint(n)
		default:
			panic("a Record field of kind " + f.Kind().String() + ": teach AppendJSON and this test about it")
		}
	}
	return r
}

// AppendJSON must write what encoding/json writes, for every field: one
// added to Record and not to AppendJSON fails here.
func TestRecordAppendJSONIsEncodingJSON(t *testing.T) {
	records := []event.Record{
		{},
		fill("x", 7),
		fill("", 0),
		fill(`<a href="x">&'\`+"\u2028\x00\x1f\xff", 1<<63),
		{EventID: "e1", AccountID: "acc", KeyID: "key", Outcome: event.Revoked, Status: 200, CFRay: "8f1c2a3b4d5e6f70-SJC",
			Attempts: 1, Subject: "revoke.urgent", Sequence: 42, PublishedAt: "2026-12-06T08:00:00.123456789Z",
			CompletedAt: "2026-12-06T08:00:01Z", Worker: "host", Stream: "REVOCATIONS"},
	}
	for _, r := range records {
		if got, want := encodings(t, r); got != want {
			t.Errorf("AppendJSON = %s\nencoding/json = %s", got, want)
		}
	}
}

// encodings is r as AppendJSON writes it, and as encoding/json does.
func encodings(t *testing.T, r event.Record) (got, want string) {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(r.AppendJSON(nil)), string(b)
}

func FuzzRecordAppendJSON(f *testing.F) {
	f.Add("e1", "acc", "revoked", "8f1c-SJC", 200, uint64(42))
	f.Add("<&>", "\xff\u2028", "\"\\", "\t\n", -1, uint64(0))
	f.Fuzz(func(t *testing.T, a, b, c, d string, n int, u uint64) {
		r := event.Record{EventID: a, AccountID: b, KeyID: a, Outcome: event.Outcome(c), Reason: event.Reason(d),
			Status: n, CFRay: d, Attempts: n, Subject: c, Sequence: u, RequestedAt: b, PublishedAt: a, CompletedAt: c,
			RequestedBy: d, Worker: b, Stream: a, ReplayOf: c, UnansweredCalls: n, AbsenceCheckedAt: d, Supersedes: u,
			TraceID: b, Credential: c}
		if got, want := encodings(t, r); got != want {
			t.Fatalf("AppendJSON = %s\nencoding/json = %s", got, want)
		}
	})
}

// Every byte alone, and after a plain prefix: the fast path of
// AppendJSONString must leave exactly to encoding/json what needs it.
func TestAppendJSONStringEveryByte(t *testing.T) {
	for c := range 256 {
		for _, s := range []string{string(rune(c)), string([]byte{byte(c)}), "id-" + string([]byte{byte(c)}) + "-x"} {
			want, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			if got := event.AppendJSONString([]byte("x"), s); string(got) != "x"+string(want) {
				t.Errorf("AppendJSONString(%q) = %s, encoding/json = %s", s, got[1:], want)
			}
		}
	}
}
