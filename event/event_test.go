package event_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
)

func TestDecodeEvent(t *testing.T) {
	good := []struct {
		name, body string
		want       event.Event
	}{
		{"minimal", `{"account_id":"a1","key_id":"k1"}`, event.Event{AccountID: "a1", KeyID: "k1"}},
		{"white space around", " \n\t{\"account_id\":\"a1\",\"key_id\":\"k1\"}\r\n ", event.Event{AccountID: "a1", KeyID: "k1"}},
		{"unknown fields ignored", `{"x":{"y":[1,{"account_id":"no"}]},"account_id":"a1","key_id":"k1","n":null}`, event.Event{AccountID: "a1", KeyID: "k1"}},
		{"32 characters", `{"account_id":"` + strings.Repeat("A", 32) + `","key_id":"k1"}`, event.Event{AccountID: strings.Repeat("A", 32), KeyID: "k1"}},
		{"a whole character escaped as a pair", `{"account_id":"a1","key_id":"k1","reason":"\ud83d\udd11 and \\ud800"}`,
			event.Event{AccountID: "a1", KeyID: "k1", Reason: "\U0001F511 and \\ud800"}},
		{"optional fields", `{"account_id":"a1","key_id":"k1","reason":"leaked in ticket 42","requested_by":"ir-bot"}`,
			event.Event{AccountID: "a1", KeyID: "k1", Reason: "leaked in ticket 42", RequestedBy: "ir-bot"}},
		{"a case-folded name is another, unknown field", `{"account_id":"a1","Account_Id":"zz","key_id":"k1"}`, event.Event{AccountID: "a1", KeyID: "k1"}},
		{"same name in nested objects", `{"account_id":"a1","key_id":"k1","m":{"key_id":1},"n":{"key_id":2}}`, event.Event{AccountID: "a1", KeyID: "k1"}},
		// RFC 3339 §5.6 allows what time.Parse does not: lower-case t and z,
		// and a leap second.
		{"requested_at in lower case", `{"account_id":"a1","key_id":"k1","requested_at":"2026-12-06t00:00:00z"}`,
			event.Event{AccountID: "a1", KeyID: "k1", RequestedAt: time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)}},
		{"requested_at on a leap second", `{"account_id":"a1","key_id":"k1","requested_at":"2016-12-31T23:59:60Z"}`,
			event.Event{AccountID: "a1", KeyID: "k1", RequestedAt: time.Date(2017, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"requested_at on a leap second, offset", `{"account_id":"a1","key_id":"k1","requested_at":"2016-12-31T18:59:60.5-05:00"}`,
			event.Event{AccountID: "a1", KeyID: "k1", RequestedAt: time.Date(2017, 1, 1, 0, 0, 0, 5e8, time.UTC)}},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := event.Decode([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if !ev.RequestedAt.Equal(tc.want.RequestedAt) {
				t.Fatalf("requested_at %v, want %v", ev.RequestedAt, tc.want.RequestedAt)
			}
			ev.RequestedAt, tc.want.RequestedAt = time.Time{}, time.Time{}
			if ev != tc.want {
				t.Fatalf("got %+v, want %+v", ev, tc.want)
			}
		})
	}
	deep := strings.Repeat(`{"a":`, 32) + "1" + strings.Repeat("}", 32)
	bad := map[string]string{
		"case-folded name does not count":  `{"ACCOUNT_ID":"a1","key_id":"k1"}`,
		"duplicate in nested object":       `{"account_id":"a1","key_id":"k1","m":{"x":1,"x":2}}`,
		"nesting deeper than 32":           `{"account_id":"a1","key_id":"k1","d":` + deep + `}`,
		"trailing garbage":                 `{"account_id":"a1","key_id":"k1"} x`,
		"reason too long":                  `{"account_id":"a1","key_id":"k1","reason":"` + strings.Repeat("é", 1025) + `"}`,
		"requested_by too long":            `{"account_id":"a1","key_id":"k1","requested_by":"` + strings.Repeat("x", 257) + `"}`,
		"empty id":                         `{"account_id":"","key_id":"k1"}`,
		"reason a number":                  `{"account_id":"a1","key_id":"k1","reason":5}`,
		"object id":                        `{"account_id":{"id":"a1"},"key_id":"k1"}`,
		"string":                           `"{\"account_id\":\"a1\"}"`,
		"unterminated":                     `{"account_id":"a1","key_id":"k1"`,
		"escaped slash still a slash":      `{"account_id":"a1","key_id":"a\/b"}`,
		"unicode escape to a dot":          `{"account_id":"a1","key_id":"\u002e\u002e"}`,
		"NUL in id":                        `{"account_id":"a1","key_id":"k\u0000"}`,
		"requested_at without a time zone": `{"account_id":"a1","key_id":"k1","requested_at":"2026-01-02T03:04:05"}`,
		"second 60 not before midnight":    `{"account_id":"a1","key_id":"k1","requested_at":"2026-01-02T03:04:60Z"}`,
		"second 61":                        `{"account_id":"a1","key_id":"k1","requested_at":"2016-12-31T23:59:61Z"}`,
		// Half a character, which encoding/json reads as U+FFFD (SPEC §2:
		// valid UTF-8 throughout).
		"a lone high surrogate in a reason": `{"account_id":"a1","key_id":"k1","reason":"x\ud800y"}`,
		"a lone low surrogate in a name":    `{"account_id":"a1","key_id":"k1","\udc00":1}`,
		"a high surrogate and no low":       `{"account_id":"a1","key_id":"k1","x":"\ud800\u0041"}`,
		"two halves read alike":             `{"account_id":"a1","key_id":"k1","\ud800":1,"\udbff":2}`,
		"a comma before the fraction":       `{"account_id":"a1","key_id":"k1","requested_at":"2024-05-01T10:00:00,5Z"}`,
		// What time.Parse takes beyond RFC 3339's shape.
		"a one-digit hour":          `{"account_id":"a1","key_id":"k1","requested_at":"2024-01-02T3:04:05Z"}`,
		"an offset of 24 hours":     `{"account_id":"a1","key_id":"k1","requested_at":"2024-01-02T03:04:05+24:00"}`,
		"an offset of 60 minutes":   `{"account_id":"a1","key_id":"k1","requested_at":"2024-01-02T03:04:05+05:60"}`,
		"a fraction without digits": `{"account_id":"a1","key_id":"k1","requested_at":"2024-01-02T03:04:05.Z"}`,
		"an offset without a colon": `{"account_id":"a1","key_id":"k1","requested_at":"2024-01-02T03:04:05+0500"}`,
	}
	for name, body := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := event.Decode([]byte(body))
			if !errors.Is(err, event.ErrInvalid) {
				t.Fatalf("err = %v, want an invalid event", err)
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
	// Exactly 32 levels is allowed.
	ok := `{"account_id":"a1","key_id":"k1","d":` + strings.Repeat(`{"a":`, 30) + "1" + strings.Repeat("}", 30) + `}`
	if _, err := event.Decode([]byte(ok)); err != nil {
		t.Fatalf("32 levels refused: %v", err)
	}
}

// FuzzDecodeEvent: whatever the body, the decoder never panics, agrees with
// the plain reference reading (refDecode), and what it accepts is safe to
// put in a URL path and obeys every rule of SPEC §2.
// Seeds are in testdata/fuzz/FuzzDecodeEvent and testdata/events.
func FuzzDecodeEvent(f *testing.F) {
	files, _ := filepath.Glob("testdata/events/*.json")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := event.Decode(body)
		ref, refOK := refDecode(body)
		if refOK != (err == nil) || (refOK && !ref.RequestedAt.Equal(ev.RequestedAt)) {
			t.Fatalf("DecodeEvent and the reference disagree on %q: err %v, reference ok %v", body, err, refOK)
		}
		if refOK {
			ref.RequestedAt = ev.RequestedAt
			if ref != ev {
				t.Fatalf("DecodeEvent read %+v, the reference %+v", ev, ref)
			}
		}
		if err != nil {
			if !errors.Is(err, event.ErrInvalid) {
				t.Fatalf("error not marked invalid: %v", err)
			}
			return
		}
		if len(body) > event.MaxBytes || !utf8.Valid(body) {
			t.Fatalf("accepted a body of %d bytes or invalid UTF-8", len(body))
		}
		if !cloudflare.ValidIdentifier(ev.AccountID) || !cloudflare.ValidIdentifier(ev.KeyID) {
			t.Fatalf("accepted identifiers %q %q", ev.AccountID, ev.KeyID)
		}
		if utf8.RuneCountInString(ev.Reason) > event.MaxReasonRunes || utf8.RuneCountInString(ev.RequestedBy) > event.MaxRequesterRunes {
			t.Fatal("accepted an over-long free-text field")
		}
		if err := ev.Validate(); err != nil {
			t.Fatalf("accepted event fails Validate: %v", err)
		}
	})
}

// BenchmarkDecodeDistinctNames: 64 KiB of distinct field names costs about
// what 64 KiB of anything else does (SPEC §10): the duplicate-name check is
// linear.
func BenchmarkDecodeDistinctNames(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"account_id":"a1","key_id":"k1"`)
	for i := 0; sb.Len() < event.MaxBytes-32; i++ {
		fmt.Fprintf(&sb, `,"f%d":0`, i)
	}
	sb.WriteString("}")
	names := []byte(sb.String())
	filler := []byte(`{"account_id":"a1","key_id":"k1","x":"` + strings.Repeat("y", len(names)-40) + `"}`)
	for _, bc := range []struct {
		name string
		body []byte
	}{{"distinct-names", names}, {"one-long-string", filler}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			for b.Loop() {
				if _, err := event.Decode(bc.body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
