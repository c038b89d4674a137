package cloudflare_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/revoker/revoker/cloudflare"
)

func TestDecodeEnvelope(t *testing.T) {
	tests := []struct {
		name        string
		body        string
		wantErr     string // BodyError substring; "" means an envelope
		wantSuccess bool
		wantCodes   []int
		wantSummary string
	}{
		{name: "ok", body: `{"success":true,"errors":[],"messages":[],"result":"ok"}`, wantSuccess: true},
		{name: "white space around", body: " \n{\"success\": true}\n", wantSuccess: true},
		{name: "null lists", body: `{"success":false,"errors":null,"messages":null,"result":null}`},
		{name: "code as string", body: `{"success":false,"errors":[{"code":"10000","message":"Authentication error"}]}`,
			wantCodes: []int{10000}, wantSummary: "10000 Authentication error"},
		{name: "bare string error", body: `{"success":false,"errors":["boom"]}`, wantSummary: "boom"},
		{name: "number error", body: `{"success":false,"errors":[42]}`, wantSummary: "42"},
		{name: "message not a string", body: `{"success":false,"errors":[{"code":1,"message":{"a":1}}]}`,
			wantCodes: []int{1}, wantSummary: `1 {"a":1}`},
		{name: "source and docs", body: `{"success":false,"errors":[{"code":7003,"message":"bad","documentation_url":"https://x","source":{"pointer":"/a"}}]}`,
			wantCodes: []int{7003}, wantSummary: "7003 bad"},
		{name: "deep chain", body: `{"success":false,"errors":[{"code":6003,"message":"Invalid request headers","error_chain":[{"code":6103,"message":"Invalid format for X-Auth-Key header","error_chain":[{"code":9}]}]}]}`,
			wantCodes: []int{6003, 6103, 9}, wantSummary: "6003 Invalid request headers; 6103 Invalid format for X-Auth-Key header; 9"},
		{name: "newlines in message", body: `{"success":false,"errors":[{"code":1,"message":"a\nb\r\n\tc"}]}`, wantCodes: []int{1}, wantSummary: "1 a b c"},
		{name: "success upper case key", body: `{"SUCCESS":true}`, wantErr: `boolean "success"`},
		{name: "success null", body: `{"success":null}`, wantErr: `boolean "success"`},
		{name: "success number", body: `{"success":1}`, wantErr: `boolean "success"`},
		{name: "errors object", body: `{"success":false,"errors":{"code":1}}`, wantErr: `"errors" is not an array`},
		{name: "messages string", body: `{"success":false,"messages":"hi"}`, wantErr: `"messages" is not an array`},
		{name: "success twice", body: `{"success":false,"errors":[],"success":true}`, wantErr: `naming "success" twice`},
		{name: "success true twice", body: `{"success":true,"errors":[],"messages":[],"result":"ok","succ\u0065ss":true}`, wantSuccess: true},
		{name: "success twice, one escaped", body: `{"success":false,"errors":[{"code":1}],"succ\u0065ss":true}`, wantErr: `naming "success" twice`},
		{name: "not json", body: `Bad Gateway`, wantErr: "not JSON"},
		{name: "json string", body: `"success"`, wantErr: "not an object"},
		{name: "null", body: `null`, wantErr: "not an object"},
		{name: "empty", body: "  \n", wantErr: "empty body"},
		{name: "invalid utf8", body: "\xff\xfe<html>", wantErr: "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, bodyErr := cloudflare.DecodeEnvelope([]byte(tt.body), "")
			if tt.wantErr != "" {
				if env != nil || !strings.Contains(bodyErr, tt.wantErr) {
					t.Fatalf("got %+v, %q; want nil and %q", env, bodyErr, tt.wantErr)
				}
				return
			}
			if env == nil || bodyErr != "" {
				t.Fatalf("got nil, %q", bodyErr)
			}
			if env.Success != tt.wantSuccess {
				t.Errorf("Success = %v", env.Success)
			}
			for _, c := range tt.wantCodes {
				if !env.HasCode(c) {
					t.Errorf("HasCode(%d) = false", c)
				}
			}
			if got := env.Summary(); got != tt.wantSummary {
				t.Errorf("Summary = %q, want %q", got, tt.wantSummary)
			}
		})
	}
}

func TestDecodeEnvelopeKeepsFields(t *testing.T) {
	env, _ := cloudflare.DecodeEnvelope([]byte(`{"success":false,"errors":[{"code":7003,"message":"bad","documentation_url":"https://developers.cloudflare.com/x","source":{"pointer":"/key"}}],"result":{"a":[1,2]}}`), "")
	if env == nil || len(env.Errors) != 1 {
		t.Fatalf("env = %+v", env)
	}
	m := env.Errors[0]
	if m.DocumentationURL != "https://developers.cloudflare.com/x" || m.Source == nil || m.Source.Pointer != "/key" {
		t.Errorf("message = %+v", m)
	}
	if string(env.Result) != `{"a":[1,2]}` {
		t.Errorf("Result = %s", env.Result)
	}
	// The types also work with encoding/json directly, and the anonymous
	// struct spelling of Source is interchangeable with MessageSource.
	m.Source = &struct {
		Pointer string `json:"pointer"`
	}{Pointer: "/p"}
	b, err := json.Marshal(m)
	if err != nil || string(b) != `{"code":7003,"message":"bad","documentation_url":"https://developers.cloudflare.com/x","source":{"pointer":"/p"}}` {
		t.Errorf("Marshal = %s, %v", b, err)
	}
}

func TestHasCodeAndSummaryEdges(t *testing.T) {
	var nilEnv *cloudflare.Envelope
	if nilEnv.HasCode(1) || nilEnv.Summary() != "" {
		t.Error("nil envelope")
	}
	env := &cloudflare.Envelope{Messages: []cloudflare.Message{{Code: 5, Message: "info"}}}
	if env.HasCode(5) {
		t.Error("HasCode looks at messages, want errors only")
	}
	if env.Summary() != "" {
		t.Errorf("Summary = %q with no errors", env.Summary())
	}
	long := &cloudflare.Envelope{}
	for range 100 {
		long.Errors = append(long.Errors, cloudflare.Message{Code: 1000, Message: strings.Repeat("é", 30) + "\n"})
	}
	s := long.Summary()
	if len(s) > 520 || strings.ContainsAny(s, "\n\r") || !utf8.ValidString(s) || !strings.HasSuffix(s, "…") {
		t.Errorf("long Summary (%d bytes) = %q", len(s), s)
	}
	if got := (&cloudflare.Envelope{Errors: []cloudflare.Message{{}}}).Summary(); got == "" {
		t.Error("an empty error renders as nothing")
	}
}

func TestOneLine(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"a\r\nb", "a b"},
		{"  a  \t b  ", "a b"},
		{"\x1b[31mred\x1b[0m", "[31mr…"},
		{"\x1b[31m", "[31m"},
		{"\xffa", "a"},
		{strings.Repeat("x", 10), strings.Repeat("x", 5) + "…"},
		{"xxxxx   ", "xxxxx"},
		{"éééé", "éé…"},
		{"ab\u00a0cd", "ab cd"},
		{"abcd e", "abcd…"},
	}
	for _, tt := range tests {
		if got := cloudflare.OneLine(tt.in, 5); got != tt.want {
			t.Errorf("OneLine(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	date := now.Add(-10 * time.Second) // the server's clock is behind
	tests := []struct {
		name string
		h    http.Header
		want time.Duration
		has  bool
	}{
		{"absent", hdr(), 0, false},
		{"seconds", hdr("Retry-After", "120"), 2 * time.Minute, true},
		{"zero", hdr("Retry-After", "0"), 0, true},
		{"fractional seconds", hdr("Retry-After", "1.5"), 1500 * time.Millisecond, true},
		{"spaces", hdr("Retry-After", " 3 "), 3 * time.Second, true},
		{"negative", hdr("Retry-After", "-1"), 0, false},
		{"plus", hdr("Retry-After", "+1"), 0, false},
		{"exponent", hdr("Retry-After", "1e3"), 0, false},
		{"hex", hdr("Retry-After", "0x10"), 0, false},
		{"inf", hdr("Retry-After", "Inf"), 0, false},
		{"nan", hdr("Retry-After", "NaN"), 0, false},
		{"dot only", hdr("Retry-After", "."), 0, false},
		{"garbage", hdr("Retry-After", "soon"), 0, false},
		{"huge", hdr("Retry-After", "99999999999999999999"), cloudflare.MaxRetryAfter, true},
		{"date vs now", hdr("Retry-After", now.Add(time.Minute).Format(http.TimeFormat)), time.Minute, true},
		{"date vs Date header", hdr("Retry-After", now.Add(time.Minute).Format(http.TimeFormat), "Date", date.Format(http.TimeFormat)), 70 * time.Second, true},
		{"date RFC 850", hdr("Retry-After", now.Add(time.Minute).Format(time.RFC850)), time.Minute, true},
		{"date ANSI C", hdr("Retry-After", now.Add(time.Minute).Format(time.ANSIC)), time.Minute, true},
		{"date past", hdr("Retry-After", now.Add(-time.Minute).Format(http.TimeFormat)), 0, true},
		{"date far future", hdr("Retry-After", now.AddDate(5, 0, 0).Format(http.TimeFormat)), cloudflare.MaxRetryAfter, true},
		{"bad Date header ignored", hdr("Retry-After", now.Add(time.Minute).Format(http.TimeFormat), "Date", "yesterday"), time.Minute, true},
		{"ms", hdr("Retry-After-Ms", "250"), 250 * time.Millisecond, true},
		{"ms fractional", hdr("Retry-After-Ms", "0.5"), 500 * time.Microsecond, true},
		{"ms wins", hdr("Retry-After-Ms", "100", "Retry-After", "9"), 100 * time.Millisecond, true},
		{"ms negative falls back", hdr("Retry-After-Ms", "-100", "Retry-After", "9"), 9 * time.Second, true},
		{"ms garbage alone", hdr("Retry-After-Ms", "x"), 0, false},
		{"ms huge", hdr("Retry-After-Ms", "1"+strings.Repeat("0", 30)), cloudflare.MaxRetryAfter, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, has := cloudflare.ParseRetryAfter(tt.h, now)
			if got != tt.want || has != tt.has {
				t.Errorf("got %v, %v; want %v, %v", got, has, tt.want, tt.has)
			}
		})
	}
}

func TestParseShouldRetry(t *testing.T) {
	for v, want := range map[string]string{"true": "true", "TRUE": "true", " false ": "false", "False": "false", "": "nil", "1": "nil", "yes": "nil"} {
		got := "nil"
		h := http.Header{}
		if v != "" {
			h.Set("x-should-retry", v)
		}
		if p := cloudflare.ParseShouldRetry(h); p != nil {
			got = map[bool]string{true: "true", false: "false"}[*p]
		}
		if got != want {
			t.Errorf("x-should-retry %q: got %s, want %s", v, got, want)
		}
	}
}

func TestParseRateLimit(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	epoch := now.Add(90 * time.Second).Unix()
	rl := func(rem int, reset time.Duration) cloudflare.RateLimit {
		return cloudflare.RateLimit{Known: true, Remaining: rem, Reset: reset}
	}
	tests := []struct {
		name string
		h    http.Header
		want cloudflare.RateLimit
	}{
		{"absent", hdr(), cloudflare.RateLimit{}},
		{"ietf", hdr("RateLimit", `"default";r=50;t=30`), rl(50, 30*time.Second)},
		{"ietf lower case", hdr("ratelimit", `"default";r=0;t=1`), rl(0, time.Second)},
		{"ietf spaces", hdr("RateLimit", ` "default" ; r=5 ; t=2 `), rl(5, 2*time.Second)},
		{"ietf two items, min wins", hdr("RateLimit", `"burst";r=9;t=1, "day";r=3;t=3600`), rl(3, time.Hour)},
		{"ietf two lines", hdr("RateLimit", `"burst";r=9;t=1`, "RateLimit", `"day";r=3;t=60`), rl(3, time.Minute)},
		{"ietf quoted comma", hdr("RateLimit", `"a,b";r=4;t=5`), rl(4, 5*time.Second)},
		{"ietf no t", hdr("RateLimit", `"default";r=7`), rl(7, 0)},
		{"ietf no r", hdr("RateLimit", `"default";t=7`), cloudflare.RateLimit{}},
		{"old draft dictionary", hdr("RateLimit", "limit=100, remaining=50, reset=30"), rl(50, 30*time.Second)},
		{"old draft dictionary reset first", hdr("RateLimit", "reset=30, limit=100, remaining=50"), rl(50, 30*time.Second)},
		{"item reset wins over loose reset", hdr("RateLimit", `"default";r=5;t=0, reset=9`), rl(5, 0)},
		{"old draft separate", hdr("RateLimit-Limit", "100", "RateLimit-Remaining", "20", "RateLimit-Reset", "10"), rl(20, 10*time.Second)},
		{"x headers", hdr("X-RateLimit-Remaining", "11", "X-RateLimit-Reset", "60"), rl(11, time.Minute)},
		{"x headers epoch", hdr("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", itoa(epoch)), rl(0, 90*time.Second)},
		{"x headers epoch vs Date", hdr("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", itoa(epoch), "Date", now.Add(30*time.Second).Format(http.TimeFormat)), rl(0, time.Minute)},
		{"x headers epoch past", hdr("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", itoa(now.Add(-time.Hour).Unix())), rl(0, 0)},
		{"x remaining only", hdr("X-RateLimit-Remaining", "3"), rl(3, 0)},
		{"x reset garbage", hdr("X-RateLimit-Remaining", "3", "X-RateLimit-Reset", "soon"), rl(3, 0)},
		{"x negative", hdr("X-RateLimit-Remaining", "-3"), cloudflare.RateLimit{}},
		{"x overflow", hdr("X-RateLimit-Remaining", strings.Repeat("9", 40)), cloudflare.RateLimit{}},
		{"x huge reset", hdr("X-RateLimit-Remaining", "1", "X-RateLimit-Reset", strings.Repeat("9", 18)), rl(1, cloudflare.MaxRetryAfter)},
		{"garbage RateLimit falls back", hdr("RateLimit", "whatever", "X-RateLimit-Remaining", "2"), rl(2, 0)},
		{"RateLimit wins", hdr("RateLimit", `"default";r=1;t=2`, "X-RateLimit-Remaining", "99"), rl(1, 2*time.Second)},
		{"unterminated quote", hdr("RateLimit", `"default;r=1;t=2`), cloudflare.RateLimit{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cloudflare.ParseRateLimit(tt.h, now); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, s := range [][3]string{
		{"", "120", ""},
		{"1500.5", "", ""},
		{"", now.Add(time.Minute).Format(http.TimeFormat), now.Format(http.TimeFormat)},
		{"", "Mon, 01 Jan 0001 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT"},
		{"-1", "1e400", "x"},
		{"99999999999999999999999999999999", "0.0000000001", ""},
		{"NaN", "Inf", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, ms, ra, date string) {
		h := http.Header{}
		h.Set("Retry-After-Ms", ms)
		h.Set("Retry-After", ra)
		h.Set("Date", date)
		d, has := cloudflare.ParseRetryAfter(h, now)
		if d < 0 || d > cloudflare.MaxRetryAfter {
			t.Fatalf("RetryAfter = %v out of range", d)
		}
		if !has && d != 0 {
			t.Fatalf("RetryAfter = %v without HasRetryAfter", d)
		}
	})
}

func FuzzParseRateLimit(f *testing.F) {
	for _, s := range [][3]string{
		{`"default";r=50;t=30`, "", ""},
		{"limit=100, remaining=50, reset=30", "", ""},
		{"", "7", "1700000000"},
		{`"a\";r=1";r=2;t=3, "b";r=0`, "1", "2"},
		{`;;;,,,=;="`, "-1", "99999999999999999999"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, ratelimit, remaining, reset string) {
		h := http.Header{}
		h.Set("RateLimit", ratelimit)
		h.Set("X-RateLimit-Remaining", remaining)
		h.Set("X-RateLimit-Reset", reset)
		rl := cloudflare.ParseRateLimit(h, now)
		if rl.Remaining < 0 || rl.Reset < 0 || rl.Reset > cloudflare.MaxRetryAfter {
			t.Fatalf("RateLimit = %+v out of range", rl)
		}
		if !rl.Known && (rl.Remaining != 0 || rl.Reset != 0) {
			t.Fatalf("RateLimit = %+v not Known but filled", rl)
		}
	})
}

func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"success":true,"errors":[],"messages":[],"result":"ok"}`,
		`{"success":false,"errors":[{"code":6003,"message":"Invalid request headers","error_chain":[{"code":6111,"message":"x"}]}]}`,
		`{"success":false,"errors":[{"code":"1e3"},"s",1,[],{"error_chain":{"code":1}}]}`,
		"<html>\n<body>502</body></html>",
		"\xff\xfe",
		`{"success":true,"success":false}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		env, bodyErr := cloudflare.DecodeEnvelope(body, "text/plain")
		if (env == nil) == (bodyErr == "") {
			t.Fatalf("env = %v with BodyError %q", env, bodyErr)
		}
		if len(bodyErr) > 320 || strings.ContainsAny(bodyErr, "\r\n") {
			t.Fatalf("BodyError not one short line: %q", bodyErr)
		}
		if env != nil {
			s := env.Summary()
			if len(s) > 520 || strings.ContainsAny(s, "\r\n") || !utf8.ValidString(s) {
				t.Fatalf("Summary not one short line: %q", s)
			}
			_ = env.HasCode(6003)
		}
	})
}
