package queue

import "time"

// CachedNext is the earliest start of the budget's next call as this
// replica last saw its entry (the watch, or its own write).
func (b *Budget) CachedNext() time.Time {
	c, _ := b.cached(b.key())
	return c.st.Next
}
