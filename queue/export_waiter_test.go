package queue

import "time"

// SetWaiterLinger sets how long an idle waiter keeps its subscription, for
// a test; the returned func restores it.
func SetWaiterLinger(d time.Duration) (restore func()) {
	old := idleLinger
	idleLinger = d
	return func() { idleLinger = old }
}

// SetCloseWrite sets how long Close waits for the writes that end a claim,
// for a test; the returned func restores it.
func SetCloseWrite(d time.Duration) (restore func()) {
	old := closeWrite
	closeWrite = d
	return func() { closeWrite = old }
}
