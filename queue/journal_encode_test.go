package queue

import (
	"encoding/json"
	"testing"
	"time"
)

// A journal message is written by hand; encoding/json must read back what
// it would have written itself, byte for byte.
func FuzzJournalAppendJSON(f *testing.F) {
	f.Add("replica-a", uint64(42), "acct", "key", int64(1765000000123456789), 1)
	f.Add("", uint64(0), "<&>\"\\", "\xff\u2028\x00", int64(0), -1)
	f.Fuzz(func(t *testing.T, replica string, seq uint64, account, key string, stored int64, count int) {
		for _, m := range []journalMsg{
			{Replica: replica},
			{Replica: replica, Calls: []journalCall{}},
			{Replica: replica, Calls: []journalCall{
				{Seq: seq, Account: account, Key: key, Stored: time.Unix(0, stored).UTC(), Count: count},
				{Seq: seq + 1, Account: key, Key: account, Count: 1},
			}},
		} {
			want, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.appendJSON(nil); string(got) != string(want) {
				t.Fatalf("appendJSON = %s\nencoding/json = %s", got, want)
			}
		}
	})
}
