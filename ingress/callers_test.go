package ingress

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// Good files load, in YAML and JSON; secrets in both forms are read.
func TestLoadCallers(t *testing.T) {
	cs, err := LoadCallers("testdata/callers/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cs.Names(), ","); got != "soar,std,pagerduty" {
		t.Fatalf("names %s", got)
	}
	soar, std, pd := cs.List[0], cs.List[1], cs.List[2]
	if !soar.Urgent || !soar.AnyAccount || soar.Rate != DefaultRate || soar.Webhook() || string(soar.tokenHash) != string(sha("tok")) {
		t.Fatalf("soar %+v", *soar)
	}
	if string(std.secret) != "standard-secret" || std.Rate != 0 || std.Urgent || !std.MayRevokeIn(tAccount) || std.MayRevokeIn(tOther) {
		t.Fatal("std: whsec_ secret not decoded, or its settings lost")
	}
	if string(pd.secret) != "pagerduty-raw" || pd.Rate != 2.5 || !pd.MayRevokeIn(tOther) {
		t.Fatal("pagerduty: raw secret not trimmed, or its settings lost")
	}
	if s := fmt.Sprintf("%v %+v %#v %s", std, std, std, std); strings.Contains(s, "standard-secret") {
		t.Fatal("a caller prints its secret")
	}
	if cs, err := LoadCallers("testdata/callers/good.json"); err != nil || cs.List[0].Name != "soar" {
		t.Fatalf("JSON: %v", err)
	}
}

// Each bad file is refused with its line and reason, and never quotes a
// secret or what was written where a hash belongs.
func TestLoadCallersRefuses(t *testing.T) {
	for file, want := range map[string]string{
		"bad-name":       ":5: caller 2: name \"Bad_Name\" must be 1-32 characters of [a-z0-9-]",
		"dup-name":       ":5: caller 2: name soar is used twice (first by caller 1)",
		"both":           ":2: caller 1: soar: give token_sha256 or webhook_secret_file, not both",
		"neither":        ":2: caller 1: soar: give token_sha256 or webhook_secret_file",
		"short-hash":     ":4: caller 1: soar: token_sha256 must be 64 hex digits",
		"bad-account":    ":6: caller 1: soar: account \"not/an/account\" must be",
		"no-accounts":    ":2: caller 1: soar: accounts is empty or missing",
		"negative-rate":  ":5: caller 1: soar: rate must be a number of requests per second, at least 0",
		"unknown-field":  ":5: ",
		"missing-secret": ":3: caller 1: pd: webhook_secret_file: no such file or directory",
		"syntax":         ":3: ",
		"empty":          ":1: no callers",
	} {
		t.Run(file, func(t *testing.T) {
			path := "testdata/callers/" + file + ".yaml"
			_, err := LoadCallers(path)
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.HasPrefix(err.Error(), strconv.Quote(path)+want) {
				t.Fatalf("error %q, want it to start with %q", err, strconv.Quote(path)+want)
			}
			for _, secret := range []string{"my-actual-token", "oops-a-secret", "pagerduty-raw"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error %q holds a value it must not", err)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q is not one line", err)
			}
		})
	}
	if _, err := LoadCallers("testdata/callers/absent.yaml"); err == nil || !strings.HasPrefix(err.Error(), `"testdata/callers/absent.yaml": `) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestParseSecret(t *testing.T) {
	for in, want := range map[string]string{
		"whsec_c2VjcmV0\n": "secret",
		"  raw secret \n":  "raw secret",
	} {
		got, err := parseSecret([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
	for _, bad := range []string{"", " \n", "whsec_!!!", "whsec_"} {
		if _, err := parseSecret([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
