package cloudflare_test

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
)

// TestTransportErrorKeepsNoPartOfTheToken (f921323): a proxy in front
// of the API that answers with a broken header line quoting the request's
// Authorization (a debug echo, a misconfigured gateway). Go's transport
// refuses the answer with "malformed MIME header line: <the line>", and
// that error is what the call returns: into the delivery's detail, logs
// and dead-letter record. Nothing of the error is redacted (SPEC §6:
// secrets never appear in errors, "not even in part").
func TestTransportErrorKeepsNoPartOfTheToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 502 Bad Gateway\r\nupstream refused " + r.Header.Get("Authorization") + "\r\n\r\n")
		buf.Flush()
		_ = bufio.NewReader(conn)
	}))
	defer srv.Close()
	c, err := cloudflare.New(cloudflare.Config{BaseURL: srv.URL + "/client/v4", Credential: cloudflare.Token(redactToken),
		Timeout: 5 * time.Second, UserAgent: "revoker/test"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.DeleteSigningKey(context.Background(), "acct1", "key1")
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), redactToken[:8]) || strings.Contains(err.Error(), redactToken[8:16]) {
		t.Errorf("the call's error holds the token: %s", err)
	}
}

// TestKeyListWhyKeepsNoPartOfTheToken (f921323): a key list whose
// "result" is not an array but a string echoing part of the token (or
// the whole of it, JSON-escaped). scrubSecrets only replaces the token's
// exact bytes; the snippet of "result" put in the list's Why() (which
// `revoker verify` and serve's periodic check print and log for an account
// whose list failed) is never passed through RedactSecrets.
func TestKeyListWhyKeepsNoPartOfTheToken(t *testing.T) {
	for _, result := range []string{
		`"token ` + redactToken[:24] + ` may not list keys"`,
		`"\u0063` + redactToken[1:] + `"`,
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"success":true,"errors":[],"messages":[],"result":` + result + `}`))
		}))
		c, err := cloudflare.New(cloudflare.Config{BaseURL: srv.URL + "/client/v4", Credential: cloudflare.Token(redactToken),
			Timeout: 5 * time.Second, UserAgent: "revoker/test"})
		if err != nil {
			t.Fatal(err)
		}
		list, err := c.ListSigningKeys(context.Background(), "acct1")
		srv.Close()
		if err != nil {
			t.Fatal(err)
		}
		if why := list.Why(); strings.Contains(why, redactToken[8:16]) {
			t.Errorf("result %s: the key list's Why() holds part of the token: %s", result, why)
		}
	}
}
