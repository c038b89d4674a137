// Package logging builds revoker's structured logger. Its lines are
// written in batches: a busy worker logs one line per event, and one
// write(2) per line cost it more than any other single step of an event
// but the API call itself.
package logging

import (
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Window is the longest a line waits for the lines that follow it before
// it is written. A process killed outright loses at most this much of its
// info lines; warnings and errors are written at once.
const Window = time.Millisecond

// maxBatch is the most a batch holds before it is written, whatever its age.
const maxBatch = 64 << 10

// New builds the logger: JSON lines (or, with format "console", a person's
// format) at level and above, to w. Sync writes what is waiting.
func New(level zapcore.Level, format string, w io.Writer) *zap.Logger {
	return NewWith(level, format, NewBatcher(w, Window), w)
}

// NewWith is New writing lines through b, and zap's own errors to w.
func NewWith(level zapcore.Level, format string, b *Batcher, w io.Writer) *zap.Logger {
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "time"
	ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if format == "console" {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	core := urgent{Core: zapcore.NewCore(enc, b, level), b: b}
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w))))
}

// Batcher gathers what is written to it and writes it to w in one go, at
// most window after the first byte waiting, or once maxBatch is waiting,
// or on Sync. It is safe for concurrent use.
type Batcher struct {
	w      io.Writer
	window time.Duration

	mu    sync.Mutex
	buf   []byte
	timer *time.Timer
	armed bool
}

// NewBatcher makes a Batcher writing to w.
func NewBatcher(w io.Writer, window time.Duration) *Batcher {
	return &Batcher{w: w, window: window}
}

// Write keeps p for the next write to w; it fails only if that write,
// made now because the batch is full, fails.
func (b *Batcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) >= maxBatch {
		return len(p), b.flush()
	}
	if !b.armed {
		b.armed = true
		if b.timer == nil {
			b.timer = time.AfterFunc(b.window, b.onTimer)
		} else {
			b.timer.Reset(b.window)
		}
	}
	return len(p), nil
}

func (b *Batcher) onTimer() {
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.flush() // a failed write of a log has nobody to tell
}

// Sync writes what is waiting, then syncs w where it can be.
func (b *Batcher) Sync() error {
	b.mu.Lock()
	err := b.flush()
	b.mu.Unlock()
	if s, ok := b.w.(interface{ Sync() error }); ok {
		if serr := s.Sync(); err == nil {
			err = serr
		}
	}
	return err
}

// flush writes what is waiting; b.mu is held, so lines keep their order.
func (b *Batcher) flush() error {
	b.armed = false
	if b.timer != nil {
		b.timer.Stop()
	}
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	if cap(b.buf) > maxBatch*2 {
		b.buf = nil // one burst of long lines does not pin a large buffer
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// urgent writes warnings and errors, and everything waiting before them,
// at once: an operator's attention, and a line shouting a lost
// confirmation, must not wait in a batch.
type urgent struct {
	zapcore.Core
	b *Batcher
}

func (c urgent) With(fields []zapcore.Field) zapcore.Core {
	return urgent{Core: c.Core.With(fields), b: c.b}
}

func (c urgent) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c urgent) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if err := c.Core.Write(e, fields); err != nil {
		return err
	}
	if e.Level >= zapcore.WarnLevel {
		c.b.mu.Lock()
		defer c.b.mu.Unlock()
		return c.b.flush()
	}
	return nil
}

// maxListed is how many names a log line lists at most.
const maxListed = 50

// Few is names cut to the first maxListed, with the count of the others as
// a last entry: a log line stays within 16 KiB (SPEC §10) whatever the size
// of a file it lists.
func Few(names []string) []string {
	if len(names) <= maxListed {
		return names
	}
	out := append([]string(nil), names[:maxListed]...)
	return append(out, fmt.Sprintf("… and %d more", len(names)-maxListed))
}
