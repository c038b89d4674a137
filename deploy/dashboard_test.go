package deploy_test

import (
	"encoding/json"
	"os"
	"testing"
)

// TestDashboardLayout: every panel of the dashboard has an id of its own
// and a place of its own on Grafana's 24-column grid, so a panel added
// later neither replaces another's settings nor hides behind it.
func TestDashboardLayout(t *testing.T) {
	b, err := os.ReadFile("grafana/revoker-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	type grid struct{ X, Y, W, H int }
	type panel struct {
		ID      int               `json:"id"`
		Title   string            `json:"title"`
		Type    string            `json:"type"`
		GridPos grid              `json:"gridPos"`
		Panels  []json.RawMessage `json:"panels"`
		Targets []struct {
			RefID string `json:"refId"`
		} `json:"targets"`
	}
	var d struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var all []panel
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatal(err)
			}
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)

	ids, titles := map[int]string{}, map[string]bool{}
	for i, p := range all {
		if other, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("panel %q: id %d, already %q's (or none)", p.Title, p.ID, other)
		}
		ids[p.ID] = p.Title
		if titles[p.Title] {
			t.Errorf("two panels are titled %q (the tests find panels by title)", p.Title)
		}
		titles[p.Title] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is off the 24-column grid", p.Title, g)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if refs[tg.RefID] || tg.RefID == "" {
				t.Errorf("panel %q: refId %q twice (or empty)", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
		}
		for _, q := range all[:i] {
			h := q.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap: %+v, %+v", q.Title, p.Title, h, g)
			}
		}
	}
}
