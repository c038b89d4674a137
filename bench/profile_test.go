package bench

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"
)

// profiler takes a CPU profile of the worker through its profiler address
// (REVOKER_DEBUG_ADDR) when BENCH_PROFILE names a file (BENCH_PROFILE_KIND
// =allocs: what it allocated over those seconds instead); otherwise it
// does nothing.
type profiler struct {
	file    string
	kind    string
	seconds int
	addr    string
}

func newProfiler(b *testing.B) *profiler {
	p := &profiler{file: os.Getenv("BENCH_PROFILE"), kind: os.Getenv("BENCH_PROFILE_KIND"), seconds: envInt(b, "BENCH_PROFILE_SECONDS", 20)}
	if p.kind == "" {
		p.kind = "profile"
	}
	if p.file != "" {
		p.addr = "127.0.0.1:" + strconv.Itoa(freePort(b))
	}
	return p
}

// vars are the worker's settings that serve the profiler.
func (p *profiler) vars() []string {
	if p.file == "" {
		return nil
	}
	return []string{"REVOKER_DEBUG_ADDR=" + p.addr}
}

// start begins the profile; the channel tells when it is written.
func (p *profiler) start() <-chan error {
	done := make(chan error, 1)
	if p.file == "" {
		done <- nil
		return done
	}
	go func() { done <- p.take() }()
	return done
}

func (p *profiler) take() error {
	c := &http.Client{Timeout: time.Duration(p.seconds+30) * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", p.addr, p.kind, p.seconds))
	if err != nil {
		return fmt.Errorf("%w (a binary without REVOKER_DEBUG_ADDR cannot be profiled)", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	f, err := os.Create(p.file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// profileRig profiles this process into BENCH_RIG_PROFILE, when set,
// until the returned function is called.
func profileRig(b *testing.B) (stop func()) {
	name := os.Getenv("BENCH_RIG_PROFILE")
	if name == "" {
		return func() {}
	}
	f, err := os.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// envInt is the positive integer in variable name, or def when unset.
func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q is not a positive integer", name, v)
	}
	return n
}
