package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/revoker/revoker/queue/queuetest"
)

func rvFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A valid event of exactly 64 KiB on the first line of a file that
// starts with a UTF-8 BOM is a valid event: the BOM is not part of it.
func TestFromFileBOMAndMaxSizeLine(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	head := `{"account_id":"a1","key_id":"k1","pad":"`
	tail := `"}`
	ev := head + strings.Repeat("x", 64<<10-len(head)-len(tail)) + tail
	if len(ev) != 64<<10 {
		t.Fatal(len(ev))
	}
	f := rvFile(t, "\xef\xbb\xbf"+ev+"\n")
	r := s.run("publish", "--from-file", f)
	r.want(t, exitOK, "1 published")
}

// onText calls fn once when what was written holds want.
type onText struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	fn   func()
	done bool
}

func (c *onText) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, _ := c.buf.Write(b)
	if !c.done && strings.Contains(c.buf.String(), c.want) {
		c.done = true
		c.fn()
	}
	return n, nil
}

func (c *onText) String() string { c.mu.Lock(); defer c.mu.Unlock(); return c.buf.String() }

// publish --wait whose NATS server goes away after the event is stored:
// the outcome is not known, which is exit 3 (SPEC §7), not 1, which
// --wait reserves for a dead-lettered event.
func TestPublishWaitNATSGone(t *testing.T) {
	s := hStack(t, nil)
	s.ensure() // no worker: no outcome can come
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := &onText{want: "published ", fn: func() { go s.ns.Shutdown() }}
	var errb lockedBuffer
	code := run(ctx, []string{"publish", "--account", "acc1", "--key", "key1", "--wait", "--timeout", "15s"},
		env{stdin: strings.NewReader(""), stdout: out, stderr: &errb, lookup: func(k string) (string, bool) { v, ok := s.env[k]; return v, ok }})
	if code != exitTimeout {
		t.Fatalf("exit %d, want %d (no outcome known)\nstdout %q\nstderr %q", code, exitTimeout, out.String(), errb.String())
	}
}

// publish --wait interrupted (Ctrl-C) after the event is stored: its fate
// is not known; exit 1 would tell a script it was dead-lettered.
func TestPublishWaitInterrupted(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ictx, interrupt := context.WithCancel(ctx)
	out := &onText{want: "published ", fn: interrupt}
	var errb lockedBuffer
	code := run(ictx, []string{"publish", "--account", "acc1", "--key", "key1", "--wait", "--timeout", "15s"},
		env{stdin: strings.NewReader(""), stdout: out, stderr: &errb, lookup: func(k string) (string, bool) { v, ok := s.env[k]; return v, ok }})
	if code == exitFailed {
		t.Fatalf("exit %d (the dead-lettered status) for an interrupted wait\nstdout %q\nstderr %q", code, out.String(), errb.String())
	}
}

// A small event followed by white space the line's end: the event is what
// is published (trimmed), a few bytes, not a "more than 65536 bytes" line.
func TestFromFileWhitespacePaddedLine(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	f := rvFile(t, `{"account_id":"a1","key_id":"k1"}`+strings.Repeat(" ", 70<<10)+"\n")
	s.run("publish", "--from-file", f).want(t, exitOK, "1 published")
}

// --from-file naming a directory is bad usage (2), as a missing file is.
func TestFromFileDirectory(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	s.run("publish", "--from-file", t.TempDir()).want(t, exitUsage, "--from-file")
}

// publish --from-file - reading a pipe that stays open (a generator, a
// terminal): Ctrl-C ends it, with what was read published; it does not
// hang until the next line comes.
func TestFromStdinInterrupted(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"publish", "--from-file", "-"},
			env{stdin: pr, stdout: &out, stderr: &errb, lookup: func(k string) (string, bool) { v, ok := s.env[k]; return v, ok }})
	}()
	if _, err := pw.Write([]byte("{\"account_id\":\"a1\",\"key_id\":\"k1\"}\n")); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "the line published", func() bool { return s.msgs("REVOCATIONS") == 1 })
	interrupt()
	select {
	case code := <-done:
		if code != exitFailed || !strings.Contains(errb.String(), "interrupted") {
			t.Fatalf("exit %d, want 1 with the interruption said\nstdout %q\nstderr %q", code, out.String(), errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after the interrupt (blocked reading stdin)\nstdout %q\nstderr %q", out.String(), errb.String())
	}
}
