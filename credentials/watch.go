package credentials

import (
	"context"
	"crypto/sha256"
	"time"
)

// DefaultWatchInterval is how often Watch reads the file when given no
// interval: SPEC §6 wants a change seen within 5 s.
const DefaultWatchInterval = 2 * time.Second

// Watch reads the file of set every `every` (0: DefaultWatchInterval) until
// ctx ends, and refreshes the secret files of the set in use.
//
// A content is acted on once two checks in a row read it, so a file caught
// half written (an in-place write truncates first) is neither loaded, which
// could drop credentials, nor reported. When the file's content differs
// from the set in use and loads, onChange
// gets the new set (from then on the set in use). When it does not load
// (it does not parse, breaks a rule, a secret file is unreadable, the file
// is gone), the set in use stays and onError gets the error once: again only
// when the content or the error changes. A file written in place and a file
// renamed over both count: the content is compared, not the file's
// metadata. Both functions are called from Watch's goroutine. A change is
// acted on within two intervals.
func Watch(ctx context.Context, set *Set, every time.Duration, onChange func(*Set), onError func(error)) {
	if every <= 0 {
		every = DefaultWatchInterval
	}
	w := watcher{cur: set, onChange: onChange, onError: onError, prev: set.digest}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.cur.Refresh()
			w.check()
		}
	}
}

type watcher struct {
	cur      *Set
	onChange func(*Set)
	onError  func(error)
	// What the previous check read (zero when it could not read), so a
	// content is acted on only when it is read twice in a row.
	prev    [sha256.Size]byte
	prevErr string
	// The last failure reported: its content and message.
	badDigest [sha256.Size]byte
	badMsg    string
}

func (w *watcher) check() {
	data, err := readFile(w.cur.path)
	var digest [sha256.Size]byte
	readErr := ""
	if err != nil {
		readErr = err.Error()
	} else {
		digest = sha256.Sum256(data)
	}
	if digest != w.prev || readErr != w.prevErr {
		w.prev, w.prevErr = digest, readErr
		return // not stable yet
	}
	if err == nil {
		if digest == w.cur.digest {
			w.badMsg = ""
			return
		}
		var next *Set
		if next, err = load(w.cur.path, data, w.cur.opts); err == nil {
			w.cur, w.badMsg = next, ""
			if w.onChange != nil {
				w.onChange(next)
			}
			return
		}
	}
	if digest == w.badDigest && err.Error() == w.badMsg {
		return
	}
	w.badDigest, w.badMsg = digest, err.Error()
	if w.onError != nil {
		w.onError(err)
	}
}
