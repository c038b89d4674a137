package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/jwt/v2"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/throttle"
)

// maxNameLen is JetStream's longest stream or consumer name.
const maxNameLen = 255

// hiddenNote ends the messages about values that are not shown.
const hiddenNote = " (the value is not shown: it may be a secret)"

func spaceOrControl(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

// nameProblem says why v is not a valid JetStream stream or durable consumer
// name, or returns "".
func nameProblem(v string) string {
	switch {
	case v == "":
		return "it is empty"
	case len(v) > maxNameLen:
		return "it is longer than " + strconv.Itoa(maxNameLen) + " bytes"
	case !utf8.ValidString(v):
		return "it is not valid UTF-8"
	case strings.ContainsFunc(v, spaceOrControl):
		return "it contains white space or a control character"
	}
	if i := strings.IndexAny(v, `.*>/\`); i >= 0 {
		return "it contains " + strconv.QuoteRune(rune(v[i]))
	}
	return ""
}

// jsName sets a JetStream stream or consumer name; what says which.
func jsName(field func(*Config) *string, what string) func(*Config, string) string {
	return func(c *Config, v string) string {
		*field(c) = v
		if p := nameProblem(v); p != "" {
			return quote(v) + " is not a valid " + what + ": " + p
		}
		return ""
	}
}

// subjectProblem says why v is not a valid literal NATS subject (one that
// can be published to and named by a stream without wildcards), or
// returns "".
func subjectProblem(v string) string {
	switch {
	case v == "":
		return "it is empty"
	case !utf8.ValidString(v):
		return "it is not valid UTF-8"
	case strings.ContainsFunc(v, spaceOrControl):
		return "it contains white space or a control character"
	case strings.ContainsAny(v, "*>"):
		return "wildcards (* and >) are not allowed"
	}
	if slices.Contains(strings.Split(v, "."), "") {
		return "it has an empty token"
	}
	return ""
}

func checkLiteralSubject(v string) string {
	if p := storedSubjectProblem(v); p != "" {
		return quote(v) + " is not a valid subject: " + p
	}
	return ""
}

// storedSubjectProblem is subjectProblem for a subject a stream must hold:
// NATS keeps the subjects under $ (JetStream's API, buckets, the system)
// and the reply inboxes to itself, and no stream can be made on them.
func storedSubjectProblem(v string) string {
	if p := subjectProblem(v); p != "" {
		return p
	}
	first, _, _ := strings.Cut(v, ".")
	if slices.Contains(natsOwn, first) {
		return "subjects under " + quote(first) + " are NATS's own (JetStream's API, buckets, the system, replies)"
	}
	return ""
}

// natsOwn are the first tokens of the subjects NATS keeps to itself.
var natsOwn = []string{"$JS", "$KV", "$O", "$SYS", "$SRV", "$MQTT", "$NRG", "$G", "_INBOX", "_R_"}

// parseSubjects reads the comma-separated work subjects.
func parseSubjects(v string) ([]string, string) {
	parts := strings.Split(v, ",")
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		switch {
		case p == "":
			return nil, quote(v) + " has an empty entry"
		case storedSubjectProblem(p) != "":
			return nil, quote(p) + " is not a valid subject: " + storedSubjectProblem(p)
		case strings.ContainsAny(p, `/\`):
			return nil, quote(p) + ` cannot be a work subject: '/' and '\' are not allowed in the durable consumer names made from it`
		case slices.Contains(out, p):
			return nil, quote(p) + " is listed twice"
		}
		out = append(out, p)
	}
	return out, ""
}

// validPort reports whether p is a decimal port number from min to 65535.
func validPort(p string, min int) bool {
	if p == "" || len(p) > 5 || strings.ContainsFunc(p, func(r rune) bool { return r < '0' || r > '9' }) {
		return false
	}
	n, err := strconv.Atoi(p)
	return err == nil && n >= min && n <= 65535
}

// parseNATSURLs checks a comma-separated list of NATS server URLs and
// returns it with the white space around the entries removed.
func parseNATSURLs(v string) (string, string) {
	if splitSecret(v) {
		// No entry is shown: the one before holds part of the password.
		return "", "an entry has '@' but no scheme of its own: a ',' in a password splits the list (write it as %2C)"
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return "", fmt.Sprintf("entry %d of %d is empty", i+1, len(parts))
		}
		if why, port := natsURLProblem(p); why != "" {
			if len(parts) > 1 {
				// An entry of a list that is no URL may be a piece of a
				// secret that held a ',': it is named, not shown.
				return "", fmt.Sprintf("entry %d of %d %s", i+1, len(parts), why)
			}
			shown := redactURL(p)
			if port != "" && shown == p {
				// Shown whole, nothing in it secret: the port too. (Where
				// a '?' or '#' cut a password, the "port" is its head.)
				why += " " + quote(port)
			}
			return "", quote(shown) + " " + why
		}
		parts[i] = p
	}
	// The NATS client takes websocket URLs or the others, never both.
	ws := 0
	for _, p := range parts {
		if u, err := url.Parse(p); err == nil && (u.Scheme == "ws" || u.Scheme == "wss") {
			ws++
		}
	}
	if ws > 0 && ws < len(parts) {
		return "", "mixes ws:// or wss:// URLs with nats:// or tls:// ones; the NATS client takes one kind or the other"
	}
	return strings.Join(parts, ","), ""
}

// natsURLProblem says what makes p no NATS server URL, "" when it is one,
// and the port it names when that is what is wrong. It shows nothing of
// p: the caller decides what may be shown.
func natsURLProblem(p string) (why, badPort string) {
	u, err := url.Parse(p)
	if err != nil {
		return "is not a URL", ""
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return "is not a nats://, tls://, ws:// or wss:// URL", ""
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return "has no host", ""
	}
	if port := u.Port(); port != "" && !validPort(port, 1) {
		return "has an invalid port", port
	}
	// A NATS URL has none of these (a websocket one may have a path, for a
	// proxy): most often a password holding '#', '?' or '/' has cut the
	// URL, and the user name would be dialled as the host.
	pathed := u.Path != "" && u.Path != "/" && u.Scheme != "ws" && u.Scheme != "wss"
	if u.RawQuery != "" || u.Fragment != "" || strings.Contains(p, "#") || pathed {
		return "has a path, query or fragment (escape '#', '?' and '/' in a password as %23, %3F and %2F)", ""
	}
	return "", ""
}

// parseBaseURL checks the Cloudflare API base URL and returns it without a
// trailing '/'.
func parseBaseURL(v string) (string, string) {
	shown := quote(redactURL(v))
	u, err := url.Parse(v)
	switch {
	case err != nil:
		return "", shown + " is not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "", shown + " is not an http:// or https:// URL"
	case u.Opaque != "" || u.Hostname() == "":
		return "", shown + " has no host"
	case u.User != nil:
		return "", shown + " must not hold a user or password"
	case strings.ContainsAny(v, "?#"):
		return "", shown + " must not have a query or fragment"
	case u.Scheme == "http" && !loopbackHost(u.Hostname()):
		// The token would cross the network in clear text: http is for a
		// stand-in on this host only.
		return "", shown + " must be https:// (http:// only for a loopback host such as 127.0.0.1)"
	}
	if port := u.Port(); port != "" && !validPort(port, 1) {
		return "", shown + " has an invalid port " + quote(port)
	}
	return strings.TrimRight(v, "/"), ""
}

// loopbackHost reports whether host names this machine only.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// optionalFile sets a path that must name a readable file when not empty.
// show says whether the path may appear in messages.
func optionalFile(field func(*Config) *string, show bool) func(*Config, string) string {
	return func(c *Config, v string) string {
		*field(c) = v
		if v == "" {
			return ""
		}
		return fileProblem(v, show)
	}
}

// fileProblem says why path does not name a readable file, or returns "".
// It never passes on the text of an os error, which holds the path.
func fileProblem(path string, show bool) string {
	what, note := "the file it names", hiddenNote
	if show {
		what, note = quote(path), ""
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return what + " does not exist" + note
	case errors.Is(err, fs.ErrPermission):
		return what + " cannot be reached: permission denied" + note
	case err != nil:
		return what + " cannot be read" + note
	case fi.IsDir():
		return what + " is a directory, not a file" + note
	}
	f, err := os.Open(path)
	switch {
	case errors.Is(err, fs.ErrPermission):
		return what + " is not readable: permission denied" + note
	case err != nil:
		return what + " cannot be opened" + note
	}
	_ = f.Close()
	return ""
}

// secret sets a credential: white space around it is trimmed, an empty
// value means "not given". The value never appears in a message.
func secret(field func(*Config) *string) func(*Config, string) string {
	return func(c *Config, v string) string {
		v = strings.TrimSpace(v)
		*field(c) = v
		for i := 0; i < len(v); i++ {
			if v[i] < 0x21 || v[i] > 0x7e {
				return "holds white space or a character that is not printable ASCII" + hiddenNote
			}
		}
		return ""
	}
}

func checkEmail(v string) string {
	at := strings.LastIndexByte(v, '@')
	bad := at <= 0 || at == len(v)-1 || strings.ContainsFunc(v, func(r rune) bool { return r < 0x21 || r > 0x7e })
	if bad {
		// Not echoed: a value here that is no address may be the API key,
		// the pair swapped by mistake.
		return "is not an email address (one word with an '@')" + hiddenNote
	}
	return ""
}

// duration sets a duration that must be greater than 0 and at least min.
func duration(field func(*Config) *time.Duration, min time.Duration) func(*Config, string) string {
	return func(c *Config, v string) string {
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			return quote(v) + " is not a duration (Go syntax, such as 500ms, 30s or 2m)"
		case d <= 0:
			return quote(v) + " is not greater than 0"
		case d < min:
			return quote(v) + " is less than " + min.String()
		}
		*field(c) = d
		return ""
	}
}

// intRange sets a whole number from min to max; max 0 means no upper bound.
func intRange(field func(*Config) *int, min, max int) func(*Config, string) string {
	return func(c *Config, v string) string {
		n, err := strconv.Atoi(v)
		switch {
		case errors.Is(err, strconv.ErrRange):
			return quote(v) + " is too large"
		case err != nil:
			return quote(v) + " is not a whole number"
		case n < min:
			return quote(v) + " is less than " + strconv.Itoa(min)
		case max > 0 && n > max:
			return quote(v) + " is more than " + strconv.Itoa(max)
		}
		*field(c) = n
		return ""
	}
}

// rate sets a number of calls per second, 0 or more.
func rate(field func(*Config) *float64) func(*Config, string) string {
	return func(c *Config, v string) string {
		f, p := parseFloatRate(v)
		if p == "" {
			*field(c) = f
		}
		return p
	}
}

func parseFloatRate(v string) (float64, string) {
	f, err := strconv.ParseFloat(v, 64)
	switch {
	case errors.Is(err, strconv.ErrRange):
		return 0, quote(v) + " is out of range"
	case err != nil:
		return 0, quote(v) + " is not a number"
	case math.IsNaN(f) || math.IsInf(f, 0):
		return 0, quote(v) + " is not a finite number"
	case f < 0:
		return 0, quote(v) + " is negative"
	case f > 0 && f < throttle.MinRate:
		return 0, quote(v) + " is out of range (0 for no limit, else at least one call an hour: 0.000278)"
	}
	return f, ""
}

// parseAccounts reads the comma-separated allowed accounts; empty (or only
// white space) means every account.
func parseAccounts(v string) ([]string, string) {
	if strings.TrimSpace(v) == "" {
		return nil, ""
	}
	parts := strings.Split(v, ",")
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		switch {
		case p == "":
			return nil, quote(v) + " has an empty entry"
		case !cloudflare.ValidIdentifier(p):
			return nil, quote(p) + " is not an account id (1 to 32 letters and digits)"
		case slices.Contains(out, p):
			return nil, quote(p) + " is listed twice"
		}
		out = append(out, p)
	}
	return out, ""
}

func checkListenAddr(v string) string {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return quote(v) + ` is not host:port (such as ":8080" or "127.0.0.1:8080")`
	}
	if !validPort(port, 0) {
		return quote(v) + " has port " + quote(port) + ", not a number from 0 to 65535"
	}
	if _, err := netip.ParseAddr(host); host != "" && host != "localhost" && err != nil { // netip takes a zone (fe80::1%eth0)
		// A name would be looked up at the start, and one that does not
		// resolve would stop it with no variable named.
		return quote(v) + " has host " + quote(host) + `, not an IP address or localhost (leave it out, as in ":8080", for every address)`
	}
	return ""
}

// checkAddrs: the metrics, profiler and ingress servers each need an
// address of their own; two on one would stop the start with exit 1.
func checkAddrs(c *Config, st *state) *Error {
	addrs := []struct{ env, v string }{{envHTTPAddr, c.HTTPAddr}, {envDebugAddr, c.DebugAddr}, {envIngressAddr, c.IngressAddr}}
	for i, a := range addrs {
		for _, b := range addrs[i+1:] {
			if a.v != "" && b.v != "" && sameListener(a.v, b.v) {
				return clash(st, b.env, a.env, b.v, "two servers cannot listen on one address")
			}
		}
	}
	return nil
}

// sameListener reports whether listening on a and on b would take one
// port of one address: the same port, on the same host or on every
// address (an empty host, 0.0.0.0, ::). Port 0 takes a free one each.
func sameListener(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	na, _ := strconv.Atoi(pa)
	nb, _ := strconv.Atoi(pb)
	if errA != nil || errB != nil || na != nb || na == 0 {
		return false
	}
	every := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || every(ha) || every(hb)
}

// checkDebugAddr allows only a loopback host: the profiler shows the
// program's memory, and a secret in it, to whoever can reach it.
func checkDebugAddr(v string) string {
	if p := checkListenAddr(v); p != "" {
		return p
	}
	host, _, _ := net.SplitHostPort(v)
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return quote(v) + " is not a loopback address (such as \"127.0.0.1:6060\"); the profiler is never served beyond this host"
	}
	return ""
}

// enum sets one of the allowed words, matched without regard to case and
// stored in lower case.
func enum(field func(*Config) *string, allowed ...string) func(*Config, string) string {
	return func(c *Config, v string) string {
		l := strings.ToLower(v)
		if !slices.Contains(allowed, l) {
			return quote(v) + " is not one of " + strings.Join(allowed, ", ")
		}
		*field(c) = l
		return ""
	}
}

// missingName names a setting that is missing while present is given: as
// given if the user set it (to ""), else in the form present was given in.
func (st *state) missingName(missing, present string) string {
	if st.userSet(missing) {
		return st.name(missing)
	}
	return st.nameLike(missing, present)
}

// shown returns the text the user gave for env, or def when none.
func (st *state) shown(env, def string) string {
	if v, ok := st.raw[env]; ok {
		return v
	}
	return def
}

func checkTLSPair(c *Config, st *state) *Error {
	cert, key := c.NATSTLSCert != "", c.NATSTLSKey != ""
	switch {
	case cert && !key:
		return &Error{
			Name:    st.missingName(envNATSTLSKey, envNATSTLSCert),
			Problem: "not set, but " + st.name(envNATSTLSCert) + " is: a client certificate needs its key",
		}
	case key && !cert:
		return &Error{
			Name:    st.missingName(envNATSTLSCert, envNATSTLSKey),
			Problem: "not set, but " + st.name(envNATSTLSKey) + " is: a client key needs its certificate",
		}
	}
	// What they hold, too: the connection would refuse them at the start
	// with no variable named (SPEC §6).
	if c.NATSTLSCA != "" {
		if b, err := os.ReadFile(c.NATSTLSCA); err == nil && !x509.NewCertPool().AppendCertsFromPEM(b) {
			return &Error{Name: st.name(envNATSTLSCA), Problem: quote(c.NATSTLSCA) + " holds no PEM certificate"}
		}
	}
	if cert && key {
		if _, err := tls.LoadX509KeyPair(c.NATSTLSCert, c.NATSTLSKey); err != nil {
			return &Error{Name: st.name(envNATSTLSCert), Problem: quote(c.NATSTLSCert) + " and " + st.name(envNATSTLSKey) +
				" are not a PEM certificate and its private key: " + oneLine(err.Error())}
		}
	}
	return nil
}

// checkNATSCreds checks that the .creds file holds a user JWT and the seed
// of its user, as the connection will read them: a file that does not
// would be refused at every connect, and reported as NATS unreachable
// instead of naming the variable (SPEC §6). Problems name no part of the
// file, which holds a secret.
func checkNATSCreds(c *Config, st *state) *Error {
	if c.NATSCreds == "" {
		return nil
	}
	bad := func(problem string) *Error {
		return &Error{Name: st.name(envNATSCreds), Problem: "the file it names " + problem + hiddenNote}
	}
	b, err := os.ReadFile(c.NATSCreds)
	if err != nil {
		return bad("cannot be read")
	}
	if _, problem := UserOfCreds(b); problem != "" {
		return bad(problem)
	}
	return nil
}

// UserOfCreds reads the user JWT of a .creds file's contents b and checks
// that the file's seed is the key of that user and the JWT has not expired. problem, "" when there is
// none, says what is wrong in words that hold no part of b.
func UserOfCreds(b []byte) (claims *jwt.UserClaims, problem string) {
	token, err := jwt.ParseDecoratedJWT(b)
	if err == nil {
		claims, err = jwt.DecodeUserClaims(token)
	}
	if err != nil {
		return nil, "holds no valid user JWT"
	}
	seed, err := jwt.ParseDecoratedUserNKey(b)
	if err != nil {
		return nil, "holds no user seed"
	}
	pub, err := seed.PublicKey()
	seed.Wipe()
	if err != nil || pub != claims.Subject {
		return nil, "holds a seed that is not the key of its user JWT"
	}
	// Every server refuses an expired JWT at each connect, which the
	// worker would report as NATS unreachable for ever.
	if claims.Expires != 0 && !time.Now().Before(time.Unix(claims.Expires, 0)) {
		return nil, "holds a user JWT that has expired"
	}
	return claims, ""
}

// clash reports two settings that must differ but share the value val. It
// names a, unless only b was given by the user.
func clash(st *state, a, b, val, why string) *Error {
	if !st.userSet(a) && st.userSet(b) {
		a, b = b, a
	}
	return &Error{Name: st.name(a), Problem: quote(val) + " is also given by " + st.name(b) + "; " + why}
}

func checkStreams(c *Config, st *state) *Error {
	// Only settings being loaded are checked against each other.
	if st.has(Work | Consumers) {
		if err := checkDurables(c, st); err != nil {
			return err
		}
	}
	if st.has(Work | DeadLetters) {
		if err := checkDeadLetterNames(c, st); err != nil {
			return err
		}
	}
	if st.has(Outcomes) {
		return checkOutcomeNames(c, st)
	}
	return nil
}

// checkDurables checks the durable consumer names made from the prefix and
// the subjects.
func checkDurables(c *Config, st *state) *Error {
	durables := make(map[string]string, len(c.Subjects))
	for _, s := range c.Subjects {
		d := c.Durable(s)
		if len(d) > maxNameLen {
			env := envSubjects
			if st.userSet(envConsumer) && !st.userSet(envSubjects) {
				env = envConsumer
			}
			return &Error{Name: st.name(env), Problem: "the durable consumer name " + quote(d) +
				" made from it is longer than " + strconv.Itoa(maxNameLen) + " bytes"}
		}
		if prev, ok := durables[d]; ok {
			return &Error{Name: st.name(envSubjects), Problem: quote(prev) + " and " + quote(s) +
				" would share the durable consumer name " + quote(d)}
		}
		durables[d] = s
	}
	return nil
}

func checkDeadLetterNames(c *Config, st *state) *Error {
	if c.DLQStream == c.Stream {
		return clash(st, envDLQStream, envStream, c.Stream, "the dead-letter stream must be a stream of its own")
	}
	for _, s := range c.Subjects {
		if s == c.DLQSubject {
			return clash(st, envDLQSubject, envSubjects, s, "dead letters must not go to a work subject")
		}
	}
	return nil
}

func checkOutcomeNames(c *Config, st *state) *Error {
	if !c.OutcomeEnabled() {
		return nil // the outcome stream is not used, so not checked
	}
	if p := nameProblem(c.OutcomeStream); p != "" {
		return &Error{Name: st.name(envOutcomeStream), Problem: quote(c.OutcomeStream) + " is not a valid stream name: " + p}
	}
	if st.has(Work) {
		if c.OutcomeStream == c.Stream {
			return clash(st, envOutcomeStream, envStream, c.Stream, "the outcome stream must be a stream of its own")
		}
		for _, s := range c.Subjects {
			if s == c.OutcomeSubject {
				return clash(st, envOutcomeSubject, envSubjects, s, "outcome records must not go to a work subject")
			}
			if overlap(s, c.OutcomeSubject+".>") {
				return overlaps(st, envSubjects, s, c.OutcomeSubject)
			}
		}
	}
	if st.has(DeadLetters) {
		if c.OutcomeStream == c.DLQStream {
			return clash(st, envOutcomeStream, envDLQStream, c.DLQStream, "the outcome stream must be a stream of its own")
		}
		if c.OutcomeSubject == c.DLQSubject {
			return clash(st, envOutcomeSubject, envDLQSubject, c.DLQSubject, "outcome records and dead letters need subjects of their own")
		}
		if overlap(c.DLQSubject, c.OutcomeSubject+".>") {
			return overlaps(st, envDLQSubject, c.DLQSubject, c.OutcomeSubject)
		}
	}
	return nil
}

// checkCredentials enforces exactly one Cloudflare credential: a token, a
// token file, or the email and key pair.
func checkCredentials(c *Config, st *state) *Error {
	if c.CredentialsFile != "" {
		// The file replaces the single credential (SPEC §6); what it says
		// is checked where it is read. The variables beside it are
		// ignored, with one warning at start (IgnoredCredentials).
		return nil
	}
	tok, file := c.APIToken != "", c.APITokenFile != ""
	email, key := c.Email != "", c.APIKey != ""
	switch {
	case tok && file:
		return &Error{Name: st.name(envAPIToken), Problem: "is set together with " + st.name(envAPITokenFile) + "; set only one of them"}
	case tok || file:
		// The token is used (SPEC §1 prefers it); a legacy pair set beside
		// it is not, and so is not checked.
		c.Email, c.APIKey = "", ""
	case email && !key:
		return &Error{Name: st.missingName(envAPIKey, envEmail), Problem: "not set, but " + st.name(envEmail) +
			" is: the legacy credential needs both"}
	case key && !email:
		return &Error{Name: st.missingName(envEmail, envAPIKey), Problem: "not set, but " + st.name(envAPIKey) +
			" is: the legacy credential needs both"}
	case !tok && !file && !email && !key:
		return &Error{Name: st.name(envAPIToken), Problem: "no Cloudflare credential is set: set " + envAPIToken +
			", or " + envAPITokenFile + ", or " + envEmail + " and " + envAPIKey + " (or the matching --cloudflare-* flags)"}
	}
	return nil
}

// IgnoredCredentials names the single-credential variables set beside a
// credentials file: they are ignored, neither read nor checked, and serve
// says so once.
func (c Config) IgnoredCredentials() []string {
	if c.CredentialsFile == "" {
		return nil
	}
	var set []string
	for _, name := range c.unused {
		switch name {
		case envAPIToken, envAPITokenFile, envEmail, envAPIKey:
			set = append(set, name)
		}
	}
	return set
}

// checkIngress: the ingress needs its callers, and TLS unless it listens on
// loopback only (SPEC §11); a certificate needs its key.
func checkIngress(c *Config, st *state) *Error {
	if c.IngressAddr == "" {
		return nil
	}
	if c.IngressCallersFile == "" {
		return &Error{Name: st.missingName(envIngressCallers, envIngressAddr), Problem: "not set, but " + st.name(envIngressAddr) +
			" is: the ingress needs its callers"}
	}
	cert, key := c.IngressTLSCert != "", c.IngressTLSKey != ""
	switch {
	case cert && !key:
		return &Error{Name: st.missingName(envIngressTLSKey, envIngressTLSCert), Problem: "not set, but " + st.name(envIngressTLSCert) + " is"}
	case key && !cert:
		return &Error{Name: st.missingName(envIngressTLSCert, envIngressTLSKey), Problem: "not set, but " + st.name(envIngressTLSKey) + " is"}
	case !cert:
		host, _, _ := net.SplitHostPort(c.IngressAddr)
		if !loopbackHost(host) {
			return &Error{Name: st.missingName(envIngressTLSCert, envIngressAddr), Problem: "not set, but " + st.name(envIngressAddr) +
				" " + quote(c.IngressAddr) + " is not loopback-only: the ingress takes bearer tokens and needs TLS"}
		}
	}
	return nil
}

func checkRetry(c *Config, st *state) *Error {
	if c.RetryMaxInterval >= c.RetryInitial {
		return nil
	}
	if st.userSet(envRetryMaxInterval) || !st.userSet(envRetryInitial) {
		return &Error{Name: st.name(envRetryMaxInterval), Problem: quote(st.shown(envRetryMaxInterval, c.RetryMaxInterval.String())) +
			" is less than " + st.name(envRetryInitial) + " (" + c.RetryInitial.String() + ")"}
	}
	return &Error{Name: st.name(envRetryInitial), Problem: quote(st.shown(envRetryInitial, c.RetryInitial.String())) +
		" is more than " + st.name(envRetryMaxInterval) + " (" + c.RetryMaxInterval.String() + ")"}
}

// overlaps is the error of subject, the value of env, falling under the
// outcome subjects of prefix. It names env, unless only the prefix was
// given by the user.
func overlaps(st *state, env, subject, prefix string) *Error {
	if !st.userSet(env) && st.userSet(envOutcomeSubject) {
		return &Error{Name: st.name(envOutcomeSubject), Problem: "the outcome subjects " + quote(prefix+".>") +
			" would hold " + quote(subject) + " of " + st.name(env) + ": two streams cannot hold one subject"}
	}
	return &Error{Name: st.name(env), Problem: quote(subject) + " falls under the outcome subjects " +
		quote(prefix+".>") + " of " + st.name(envOutcomeSubject) + ": two streams cannot hold one subject"}
}

// overlap reports whether some subject matches both a and b, NATS
// wildcards included ("*" one token, ">" the rest): JetStream refuses a
// stream whose subjects overlap another's, and the worker would retry its
// setup for ever.
func overlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(at) && i < len(bt); i++ {
		switch {
		case at[i] == ">" || bt[i] == ">":
			return true
		case at[i] != "*" && bt[i] != "*" && at[i] != bt[i]:
			return false
		}
	}
	return len(at) == len(bt)
}
