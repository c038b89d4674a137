package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

const (
	replayRecordsDefault = 50_000
	// replayMaxRSS is what `dlq replay --all` may hold at its peak,
	// whatever the number of records (SPEC §5: bounded memory).
	replayMaxRSS = 64 << 20
)

// BenchmarkDLQReplayAll: `revoker dlq replay --all`, the real binary as
// its own process, over 50,000 dead letters. Every record must be
// republished once, the dead-letter stream left empty, and the command's
// peak resident set stay within 64 MiB. Run:
//
//	go test -run '^$' -bench DLQReplayAll -benchtime 1x ./bench/
func BenchmarkDLQReplayAll(b *testing.B) {
	// BENCH_REPLAY_RECORDS sets another count, to see whether the peak
	// follows the number of records.
	replayRecords := replayRecordsDefault
	if v, err := strconv.Atoi(os.Getenv("BENCH_REPLAY_RECORDS")); err == nil && v >= 0 {
		replayRecords = v
	}
	for range b.N {
		r := newRig(b)
		cfg := config.Default()
		ctx, cancel := ctxTimeout(10 * time.Minute)
		defer cancel()
		for _, sc := range []jetstream.StreamConfig{queue.WorkStream(cfg.Topology()), queue.DLQStream(cfg.Topology())} {
			if _, err := r.js.CreateStream(ctx, sc); err != nil {
				b.Fatal(err)
			}
		}
		// The replay notes each republish there; the worker would have
		// created it.
		if _, err := r.js.CreateKeyValue(ctx, queue.ReplaysConfig(cfg.StreamReplicas)); err != nil {
			b.Fatal(err)
		}
		r.fillDeadLetters(cfg, replayRecords)

		out, err := os.Create(filepath.Join(b.TempDir(), "replay.out"))
		if err != nil {
			b.Fatal(err)
		}
		defer out.Close()
		var stderr bytes.Buffer
		// The peak is read two ways. The child's own rusage cannot be
		// used: Go starts a child on the parent's memory (vfork), and
		// Linux keeps that memory's high-water mark across exec, so it
		// would report this process (the JetStream server with every
		// record) instead of the command. GNU time forks the command
		// from its own small image and reports its maxrss; VmHWM, the
		// high-water mark of the command's own memory, is sampled from
		// /proc while it runs.
		args := []string{binary, "dlq", "replay", "--all"}
		timed := false
		if _, err := os.Stat("/usr/bin/time"); err == nil {
			args = append([]string{"/usr/bin/time", "-f", "maxrss-kb %M"}, args...)
			timed = true
		}
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "REVOKER_NATS_URL="+r.srv.ClientURL())
		cmd.Stdout, cmd.Stderr = out, &stderr
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		hwm := make(chan int64, 1)
		go func() { hwm <- sampleHWM(cmd.Process.Pid, timed, done) }()
		err = cmd.Wait()
		close(done)
		if err != nil {
			b.Fatalf("dlq replay --all: %v\n%s", err, stderr.String())
		}
		took := time.Since(start)
		peak := <-hwm
		if timed {
			var kb int64
			i := strings.LastIndex(stderr.String(), "maxrss-kb ")
			if _, err := fmt.Sscanf(stderr.String()[max(i, 0):], "maxrss-kb %d", &kb); err != nil {
				b.Fatalf("no maxrss from time: %v\n%s", err, stderr.String())
			}
			b.Logf("maxrss reported by GNU time: %.1f MiB; VmHWM sampled: %.1f MiB", float64(kb)/1024, float64(peak)/(1<<20))
			peak = max(peak, kb<<10)
		}

		// Every record republished once, none reported twice.
		printed, err := os.ReadFile(out.Name())
		if err != nil {
			b.Fatal(err)
		}
		replayed := strings.Count("\n"+string(printed), "\nreplayed ")
		again := strings.Count(string(printed), "already republished")
		if replayed != replayRecords || again != 0 {
			b.Errorf("the command reports %d replays (%d already republished), want %d", replayed, again, replayRecords)
		}
		// No worker runs here: the records stay until one takes the
		// replays (only the worker removes records).
		if n := r.streamMsgs(cfg.DLQStream); n != uint64(replayRecords) {
			b.Errorf("the dead-letter stream holds %d records after the replay, want the %d replayed", n, replayRecords)
		}
		r.checkReplays(cfg, replayRecords)

		b.ReportMetric(float64(peak)/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(replayRecords)/took.Seconds(), "records/s")
		b.Logf("%s: %d dead letters replayed in %s, peak RSS %.1f MiB (limit %d MiB)",
			cores(), replayRecords, took.Round(time.Millisecond), float64(peak)/(1<<20), replayMaxRSS>>20)
		if peak > replayMaxRSS {
			b.Errorf("peak RSS %.1f MiB, more than %d MiB", float64(peak)/(1<<20), replayMaxRSS>>20)
		}
	}
}

// fillDeadLetters stores n dead letters as the worker writes them, event
// i of key r<i> from sequence i+1 of the scheduled subject.
func (r *rig) fillDeadLetters(cfg config.Config, n int) {
	r.b.Helper()
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		r.b.Fatal(err)
	}
	failed := time.Now()
	for i := range n {
		body := fmt.Appendf(nil, `{"account_id":"benchacct","key_id":"r%06d","reason":"rotation"}`, i)
		m := queue.DeadLetterMsg(cfg.DLQSubject, event.DeadLetter{
			Reason: event.APIRejected, Detail: "10000: Authentication error", Status: 400, Called: true, Attempts: 1,
			EventID: fmt.Sprintf("ev-%06d", i), Stream: cfg.Stream, Subject: cfg.LowestPriority(), Sequence: uint64(i + 1), FailedAt: failed,
		}, body, queue.MaxEventMsg)
		// A slow server stalls the window; wait for it.
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			r.b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		r.b.Fatal("publish acks did not arrive")
	}
	if got := r.streamMsgs(cfg.DLQStream); got != uint64(n) {
		r.b.Fatalf("the dead-letter stream holds %d records, want %d", got, n)
	}
}

// checkReplays reads the work stream back: n events, one per dead letter,
// each under the replay id of its record and with its original body.
func (r *rig) checkReplays(cfg config.Config, n int) {
	r.b.Helper()
	ctx, cancel := ctxTimeout(5 * time.Minute)
	defer cancel()
	s, err := r.js.Stream(ctx, cfg.Stream)
	if err != nil {
		r.b.Fatal(err)
	}
	if got := s.CachedInfo().State.Msgs; got != uint64(n) {
		r.b.Fatalf("the work stream holds %d events, want %d", got, n)
	}
	// A work-queue stream takes no ordered consumer: read it by sequence.
	ids := make(map[string]bool, n)
	keys := make(map[string]bool, n)
	for seq := uint64(1); seq <= s.CachedInfo().State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			r.b.Fatalf("work sequence %d: %v", seq, err)
		}
		id := m.Header.Get(jetstream.MsgIDHeader)
		ev, err := event.Decode(m.Data)
		if err != nil {
			r.b.Fatalf("work sequence %d: %v", seq, err)
		}
		if ids[id] || keys[ev.KeyID] || !strings.HasPrefix(id, "replay:") || m.Subject != cfg.LowestPriority() {
			r.b.Fatalf("work sequence %d: id %s, key %s, subject %s: not one replay per record", seq, id, ev.KeyID, m.Subject)
		}
		ids[id], keys[ev.KeyID] = true, true
	}
	if len(ids) != n || len(keys) != n {
		r.b.Fatalf("%d replay ids and %d keys, want %d", len(ids), len(keys), n)
	}
}

// streamMsgs is how many messages stream holds now.
func (r *rig) streamMsgs(stream string) uint64 {
	r.b.Helper()
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	s, err := r.js.Stream(ctx, stream)
	if err != nil {
		r.b.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		r.b.Fatal(err)
	}
	return info.State.Msgs
}

// sampleHWM reads the VmHWM of process pid (with inner, of its only
// child: the command under GNU time) every 10 ms until done, and returns
// the last value read, in bytes. VmHWM only grows, so the last reading is
// the peak up to then.
func sampleHWM(pid int, inner bool, done <-chan struct{}) int64 {
	var last int64
	for {
		p := pid
		if inner {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
			p, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p)); p > 0 && err == nil {
			for _, l := range strings.Split(string(st), "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
					if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil && kb<<10 > last {
						last = kb << 10
					}
				}
			}
		}
		select {
		case <-done:
			return last
		case <-time.After(10 * time.Millisecond): // the sampling interval, not a synchronisation
		}
	}
}
