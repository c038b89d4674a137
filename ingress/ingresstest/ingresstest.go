// Package ingresstest is for tests of the HTTP ingress, in its package and
// end to end: the OpenAPI document loaded for validation, and requests
// signed the ways the ingress's webhook callers sign them.
//
// It names the headers as their senders do rather than importing the
// ingress (whose own tests use it), which also checks the ingress's names.
package ingresstest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/revoker/revoker/docs"
)

// OpenAPIRouter loads docs/openapi.json with kin-openapi, checks that it
// is valid OpenAPI, and returns a router to validate requests and
// responses against it.
func OpenAPIRouter(t testing.TB) routers.Router {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(docs.OpenAPI)
	if err != nil {
		t.Fatalf("docs/openapi.json does not load: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("docs/openapi.json is not valid OpenAPI: %v", err)
	}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// SignStandard returns the headers of body signed as Standard Webhooks
// signs it: HMAC-SHA256 of "id.timestamp.body", base64, version v1.
func SignStandard(secret []byte, id string, at time.Time, body string) []string {
	ts := strconv.FormatInt(at.Unix(), 10)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(id + "." + ts + "." + body))
	return []string{"webhook-id", id, "webhook-timestamp", ts,
		"webhook-signature", "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))}
}

// SignPagerDuty returns the header of body signed as PagerDuty v3 signs
// it: HMAC-SHA256 of the body, hex, version v1.
func SignPagerDuty(secret []byte, body string) []string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(body))
	return []string{"X-PagerDuty-Signature", "v1=" + hex.EncodeToString(m.Sum(nil))}
}
