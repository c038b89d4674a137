package config

import (
	"flag"
	"strings"
)

// secretFlags are the flags whose value is, or may hold, a secret, with
// what to use instead. hasSecret reports whether a value holds one.
var secretFlags = []struct {
	env       string
	instead   string
	hasSecret func(v string) bool
}{
	{"CLOUDFLARE_API_TOKEN", "CLOUDFLARE_API_TOKEN or, better, CLOUDFLARE_API_TOKEN_FILE", nonEmpty},
	{"CLOUDFLARE_API_KEY", "CLOUDFLARE_API_KEY", nonEmpty},
	{"REVOKER_NATS_URL", "REVOKER_NATS_URL, or a .creds file in REVOKER_NATS_CREDS", urlListHasUserinfo},
	{"CLOUDFLARE_BASE_URL", "CLOUDFLARE_BASE_URL", urlListHasUserinfo},
}

func nonEmpty(v string) bool { return strings.TrimSpace(v) != "" }

// urlListHasUserinfo reports whether any URL of a comma-separated list has a
// user, password or token before its host.
func urlListHasUserinfo(v string) bool { return redactURLList(v) != v }

// SecretFlagWarnings returns one line for each secret given on the command
// line of fs (after fs.Parse): anyone who can list processes can read it.
// Each names the flag and the variable or file to use instead, never the
// value. A secret given as a flag still works.
func SecretFlagWarnings(fs *flag.FlagSet) []string {
	var warns []string
	for _, s := range secretFlags {
		f := fs.Lookup(flagName(s.env))
		if f == nil {
			continue
		}
		fv, ok := f.Value.(*flagValue)
		if !ok || !fv.set || !s.hasSecret(fv.val) {
			continue
		}
		what := "the secret in --" + f.Name
		if s.env == "CLOUDFLARE_API_TOKEN" || s.env == "CLOUDFLARE_API_KEY" {
			what = "--" + f.Name
		}
		warns = append(warns, what+" is readable by anyone who can list this machine's processes; set "+s.instead+" instead")
	}
	return warns
}
