package queue

// HoldJournal makes l's journal act as if a write were under way, so that
// announcements gather; release writes them, as the running write would
// on its return.
func HoldJournal(l *Ledger) (release func()) {
	l.journal.mu.Lock()
	l.journal.writing = true
	l.journal.mu.Unlock()
	return func() { go l.writeJournal() }
}

// Pending is how many announcements wait for the journal's next write.
func Pending(l *Ledger) int {
	l.journal.mu.Lock()
	defer l.journal.mu.Unlock()
	return len(l.journal.pending)
}
