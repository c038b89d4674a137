package queue

import "time"

// SetRecordClockMargin sets how much earlier than its event a record may
// seem stored, until restore is called.
func SetRecordClockMargin(d time.Duration) (restore func()) {
	old := recordClockMargin
	recordClockMargin = d
	return func() { recordClockMargin = old }
}
