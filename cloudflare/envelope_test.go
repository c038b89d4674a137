package cloudflare_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/revoker/revoker/cloudflare"
)

// plainSeeds are answers read the short way, and answers that must go the
// long way; FuzzPlainEnvelope starts from them.
var plainSeeds = []struct {
	body  string
	plain bool
}{
	{`{"success":true,"errors":[],"messages":[],"result":"ok"}`, true},
	{`{"result":{"id":"ea95132c15732412d22c1476fa83f27a"},"success":true,"errors":[],"messages":[]}`, true},
	{" {\n \"success\" : false , \"errors\" : null ,\"result\":null}\n", true},
	{`{"success":true}`, true},
	{`{"success":true,"success":false}`, false}, // reads two ways: the long way refuses it
	{`{"success":false,"result":1,"result":2}`, false},
	{`{"success":true,"result":[1,{"a":"}"},"\"]"],"x":{"y":[]}}`, true},
	{`{"SUCCESS":true}`, false},
	{`{"succ\u0065ss":true}`, false},
	{`{"success":"true"}`, false},
	{`{"success":true,"errors":[{"code":1}]}`, false},
	{`{"success":true,"messages":[ ]}`, false},
	{`{"success":true,"errors":[]`, false},
	{`["success",true]`, false},
	{`{"suc` + "\xff" + `cess":true}`, false},
}

func TestPlainEnvelope(t *testing.T) {
	for _, s := range plainSeeds {
		env, ok := cloudflare.DecodePlainEnvelope([]byte(s.body))
		if ok != s.plain {
			t.Errorf("%q read the short way: %v, want %v", s.body, ok, s.plain)
			continue
		}
		if !ok {
			continue
		}
		full, reason := cloudflare.DecodeEnvelopeFully([]byte(s.body), "")
		if reason != "" || !reflect.DeepEqual(env, full) {
			t.Errorf("%q: short way %+v, long way %+v (%s)", s.body, env, full, reason)
		}
	}
}

// FuzzPlainEnvelope: whatever the short way reads, the long way reads the
// same, success and result alike; a success the long way would not see is
// the worst thing a decoder could add.
func FuzzPlainEnvelope(f *testing.F) {
	for _, s := range plainSeeds {
		f.Add([]byte(s.body))
	}
	f.Fuzz(readsAsFull)
}

// readsAsFull fails t if the short way reads body, and the long way reads
// it otherwise.
func readsAsFull(t *testing.T, body []byte) {
	env, ok := cloudflare.DecodePlainEnvelope(body)
	if !ok {
		return
	}
	full, reason := cloudflare.DecodeEnvelopeFully(body, "")
	if reason != "" || !reflect.DeepEqual(env, full) {
		t.Fatalf("%q: short way %+v, long way %+v (%s)", body, env, full, reason)
	}
}

// FuzzPlainEnvelopeFields builds objects from fuzzed field names and
// values, so that most inputs are valid JSON and reach the short way.
func FuzzPlainEnvelopeFields(f *testing.F) {
	f.Add("success", "true", "result", `"ok"`, "errors", "[]")
	f.Add("result", `{"id":"x"}`, "success", "false", "messages", "null")
	f.Add("success", "true", "success", "false", "Success", "true")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		var b []byte
		b = append(b, '{')
		for i, kv := range [][2]string{{k1, v1}, {k2, v2}, {k3, v3}} {
			if i > 0 {
				b = append(b, ',')
			}
			name, _ := json.Marshal(kv[0])
			b = append(append(append(b, name...), ':'), kv[1]...)
		}
		b = append(b, '}')
		readsAsFull(t, b)
	})
}
