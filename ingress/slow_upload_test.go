package ingress

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestSlowUploadStillGetsItsAnswer: the server's write deadline is set
// when a request's headers are read, so a body that takes long to arrive
// (within the read timeout) used up the time its Prefer wait and its
// answer had: the caller, its event stored, got a closed connection and
// no answer. The deadline now runs from the end of the body's upload.
func TestSlowUploadStillGetsItsAnswer(t *testing.T) {
	defer func(r, m time.Duration) { readTimeout, writeMargin = r, m }(readTimeout, writeMargin)
	readTimeout, writeMargin = 10*time.Second, time.Second
	const upload = 2500 * time.Millisecond
	// No worker runs: the wait lasts all of MaxWait, and the answer is 202.
	h := newHarness(t, func(c *Config) { c.MaxWait = time.Second })
	body := evBody(tAccount, "slowupload")
	pr, pw := io.Pipe()
	req := h.post("", hdrs(bearer(tToken), []string{"Prefer", "wait=1"})...)
	req.Body, req.ContentLength = pr, int64(len(body))
	go func() {
		_, _ = io.WriteString(pw, body[:1])
		// The slow caller itself, not a wait for anything: the rest of
		// the body comes past the server's whole write timeout.
		time.Sleep(upload)
		_, _ = io.WriteString(pw, body[1:])
		_ = pw.Close()
	}()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("a body uploaded in %v with Prefer: wait=1 (MaxWait 1s, write margin 1s) got no answer: %v; want 202", upload, err)
	}
	defer res.Body.Close()
	if _, err := io.ReadAll(res.Body); err != nil {
		t.Fatalf("the answer broke off: %v", err)
	}
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d, want 202", res.StatusCode)
	}
	if n := h.msgs(); n != 1 {
		t.Fatalf("the work stream holds %d events, want 1", n)
	}
}
