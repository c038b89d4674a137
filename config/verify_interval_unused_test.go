package config_test

import (
	"testing"

	"github.com/revoker/revoker/config"
)

// With outcome records off, serve never runs the periodic check, so
// REVOKER_VERIFY_INTERVAL is not used and not checked (SPEC §6: "Only the
// value actually used is checked").
func TestVerifyIntervalUncheckedWithOutcomesOff(t *testing.T) {
	env := baseEnv()
	env["REVOKER_OUTCOME_SUBJECT"] = ""
	env["REVOKER_VERIFY_INTERVAL"] = "hourly"
	if _, err := load(t, config.All, env); err != nil {
		t.Fatalf("an unused value was checked: %v", err)
	}
}
