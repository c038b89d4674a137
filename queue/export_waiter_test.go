package queue

import "time"

// SetWaiterLinger sets how long an idle waiter keeps its subscription, for
// a test; the returned func restores it.
func SetWaiterLinger(d time.Duration) (restore func()) {
	old := idleLinger
	idleLinger = d
	return func() { idleLinger = old }
}
