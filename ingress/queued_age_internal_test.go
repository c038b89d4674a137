package ingress

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestQueuedAgeIsTheEventsAge: a 202 tells the event's age (SPEC §11) from
// when the work stream stored it, not from when this replica last wrote
// its claim (a takeover writes it again, later).
func TestQueuedAgeIsTheEventsAge(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	s := &Server{now: func() time.Time { return now }}
	e := entry{EventID: "ev-1", StoredAt: now.Add(-time.Second), EventStoredAt: now.Add(-90 * time.Second)}
	rec := httptest.NewRecorder()
	s.queued(rec, &call{}, e, StateQueued)
	var q Queued
	if rec.Code != http.StatusAccepted || json.Unmarshal(rec.Body.Bytes(), &q) != nil {
		t.Fatalf("answered %d %s", rec.Code, rec.Body)
	}
	if q.AgeSeconds != 90 {
		t.Errorf("age_seconds %d, want 90: the event was stored 90 s ago, its claim written again 1 s ago", q.AgeSeconds)
	}
}
