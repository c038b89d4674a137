package config

import (
	"flag"
	"os"
	"slices"
	"strings"
)

// Loader reads the settings of the sections given to Register. Make one with
// Register.
type Loader struct {
	sections Section
	flags    map[string]*flagValue // by variable name
	kept     map[string]bool       // when set by Keep, the only settings Load reads
}

// Register adds the flags of the given sections to fs, so that fs refuses
// the flags of the other sections, and returns the Loader that reads them;
// only, when given, narrows the flags to those settings' (by variable).
// Call Load after fs.Parse.
//
// Every flag takes a value (--nats-url=URL or --nats-url URL), except
// --create-streams, a boolean flag: --create-streams alone means true,
// --create-streams=false turns it off.
func Register(fs *flag.FlagSet, sections Section, only ...string) *Loader {
	l := &Loader{sections: sections, flags: make(map[string]*flagValue)}
	def := Default()
	for i := range settings {
		s := &settings[i]
		if s.section&sections == 0 || len(only) > 0 && !slices.Contains(only, s.env) {
			continue
		}
		fv := &flagValue{boolFlag: s.isBool, def: s.def(def)}
		l.flags[s.env] = fv
		fs.Var(fv, s.flagName(), s.usage+" (env "+s.env+")")
	}
	return l
}

// Keep narrows Load to the settings named by their variables, for a
// command whose use of its sections depends on its own flags (SPEC §6:
// "Only the value actually used is checked"). Call it after fs.Parse: a
// flag given for a setting not kept is an error naming it, since it would
// be ignored.
func (l *Loader) Keep(envs ...string) error {
	l.kept = make(map[string]bool, len(envs))
	for _, env := range envs {
		l.kept[env] = true
	}
	for i := range settings {
		s := &settings[i]
		if fv := l.flags[s.env]; fv != nil && fv.set && !l.kept[s.env] {
			return &Error{Name: "--" + s.flagName(), Problem: "not used here"}
		}
	}
	return nil
}

// Load returns the configuration: the defaults, overridden by the
// environment variables, overridden by the flags given to fs.Parse. Only the
// settings of the sections given to Register are read and checked; the
// others keep their defaults.
//
// lookup is os.LookupEnv in production; nil means os.LookupEnv. A variable
// that lookup reports as set to "" counts as set (see the package
// documentation).
//
// A bad value makes Load return a zero Config and a *Error naming the flag
// or variable; the first bad value found is reported.
func (l *Loader) Load(lookup func(string) (string, bool)) (Config, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	cfg := Default()
	st := &state{origin: make(map[string]origin), raw: make(map[string]string), sections: l.sections}
	// given is what was given for a setting, a flag over its variable.
	given := func(env string) (v string, from origin) {
		if fv := l.flags[env]; fv != nil && fv.set {
			return fv.val, fromFlag
		}
		if ev, ok := lookup(env); ok {
			return ev, fromEnv
		}
		return "", unset
	}
	// text is what a setting's value is: as given, else its default.
	text := func(env string) string {
		v, from := given(env)
		if from == unset {
			for i := range settings {
				if settings[i].env == env {
					return settings[i].def(Default())
				}
			}
		}
		return v
	}
	for i := range settings {
		s := &settings[i]
		if s.section&l.sections == 0 || l.kept != nil && !l.kept[s.env] {
			continue
		}
		v, from := given(s.env)
		if from == unset {
			continue
		}
		if s.unused != nil && s.unused(text) {
			if v != "" {
				cfg.unused = append(cfg.unused, s.env)
			}
			continue
		}
		st.origin[s.env] = from
		st.raw[s.env] = v
		if v == "" && s.required {
			how := "unset it"
			if st.origin[s.env] == fromFlag {
				how = "leave the flag out"
			}
			return Config{}, &Error{Name: st.name(s.env), Problem: `"" is empty; ` + how + " to use the default " + quote(s.def(Default()))}
		}
		if p := s.apply(&cfg, v); p != "" {
			return Config{}, &Error{Name: st.name(s.env), Problem: p}
		}
	}
	for _, c := range crossChecks {
		if c.section&l.sections == 0 {
			continue
		}
		if err := c.check(&cfg, st); err != nil {
			return Config{}, err
		}
	}
	return cfg, nil
}

// flagValue is a flag.Value that only records what was given; Load parses
// and checks it, so that errors have one format and secrets given as flags
// are never echoed by the flag package.
type flagValue struct {
	def      string // the default as shown in -help
	boolFlag bool
	val      string
	set      bool
}

// String returns the default, for -help. It never returns the value set,
// which may be a secret.
func (f *flagValue) String() string {
	if f == nil {
		return ""
	}
	return f.def
}

func (f *flagValue) Set(v string) error {
	f.val, f.set = v, true
	return nil
}

// IsBoolFlag lets a boolean setting be given as a bare --flag.
func (f *flagValue) IsBoolFlag() bool { return f != nil && f.boolFlag }

type origin int

const (
	unset origin = iota
	fromEnv
	fromFlag
)

// state records where each value read by Load came from.
type state struct {
	origin   map[string]origin // by variable name
	raw      map[string]string // the text given, by variable name
	sections Section           // the sections being loaded
}

// has reports whether every one of sections is being loaded.
func (st *state) has(sections Section) bool { return st.sections&sections == sections }

// name returns the name the user set a setting by: its flag if the value
// came from a flag, else its variable.
func (st *state) name(env string) string {
	if st.origin[env] == fromFlag {
		return "--" + flagName(env)
	}
	return env
}

// nameLike names the setting env in the form the user used for other: the
// flag if other came from a flag, else the variable. It is for errors about
// a missing partner of a setting that was given.
func (st *state) nameLike(env, other string) string {
	if st.origin[other] == fromFlag {
		return "--" + flagName(env)
	}
	return env
}

// userSet reports whether env was given as a variable or a flag.
func (st *state) userSet(env string) bool { return st.origin[env] != unset }

// flagName returns the flag matching a variable: REVOKER_ is dropped,
// CLOUDFLARE_ kept, the rest lower-cased with '_' turned into '-'.
func flagName(env string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(env, "REVOKER_")), "_", "-")
}
