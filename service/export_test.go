package service

import "time"

// SetStoreTimeout sets how long a request's event may take to be stored,
// until the test ends.
func SetStoreTimeout(t interface{ Cleanup(func()) }, d time.Duration) {
	old := storeTimeout
	storeTimeout = d
	t.Cleanup(func() { storeTimeout = old })
}
