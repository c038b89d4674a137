package deploy_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestEveryAlertHasARunbookLine checks that each alert of alerts.yml, whose
// runbook_url points at the README's Runbook, has its line there.
func TestEveryAlertHasARunbookLine(t *testing.T) {
	rules, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "\n## Runbook\n")
	if start < 0 {
		t.Fatal(`README.md has no "## Runbook" section`)
	}
	runbook := text[start+1:]
	if end := strings.Index(runbook, "\n## "); end >= 0 {
		runbook = runbook[:end]
	}
	names := regexp.MustCompile(`(?m)^\s*- alert: (\w+)`).FindAllStringSubmatch(string(rules), -1)
	if len(names) == 0 {
		t.Fatal("no alert found in alerts.yml")
	}
	for _, n := range names {
		if !strings.Contains(runbook, "**"+n[1]+"**") {
			t.Errorf("alert %s has no line (**%s**) in the README's Runbook section", n[1], n[1])
		}
	}
}
