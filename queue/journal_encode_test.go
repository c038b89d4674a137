package queue

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// A journal message is written by hand; encoding/json must read back what
// it would have written itself, byte for byte, and fail where it fails.
func FuzzJournalAppendJSON(f *testing.F) {
	// A field added to either type without its place in appendJSON would
	// be left out unnoticed where it is empty: count them.
	if n, m := reflect.TypeFor[journalMsg]().NumField(), reflect.TypeFor[journalCall]().NumField(); n != 2 || m != 5 {
		f.Fatalf("journalMsg has %d fields, journalCall %d: teach appendJSON and this test about the new ones", n, m)
	}
	f.Add("replica-a", uint64(42), "acct", "key", int64(1765000000123456789), 1, 0, 0)
	f.Add("", uint64(0), "<&>\"\\", "\xff\u2028\x00", int64(0), -1, 0, 0)
	f.Add("r", uint64(1<<63), "a", "k", int64(-1), 7, 10000, 0)      // a year encoding/json refuses
	f.Add("r", uint64(5), "a", "k", int64(123456789), 1, 2026, 3600) // a zone other than UTC
	f.Fuzz(func(t *testing.T, replica string, seq uint64, account, key string, stored int64, count, year, offset int) {
		at := time.Unix(0, stored).UTC()
		if year != 0 {
			at = time.Date(year, 1, 2, 3, 4, 5, int(stored%1e9), time.FixedZone("z", offset))
		}
		for _, m := range []journalMsg{
			{Replica: replica},
			{Replica: replica, Calls: []journalCall{}},
			{Replica: replica, Calls: []journalCall{
				{Seq: seq, Account: account, Key: key, Stored: at, Count: count},
				{Seq: seq + 1, Account: key, Key: account, Count: 1},
			}},
		} {
			want, wantErr := json.Marshal(m)
			got, err := m.appendJSON(nil)
			if (err != nil) != (wantErr != nil) || string(got) != string(want) {
				t.Fatalf("appendJSON = %s, %v\nencoding/json = %s, %v", got, err, want, wantErr)
			}
		}
	})
}
