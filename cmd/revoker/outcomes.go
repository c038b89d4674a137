package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

func outcomesCmd(ctx context.Context, args []string, e env) int {
	e = lockedEnv(e)
	fs := flag.NewFlagSet("outcomes", flag.ContinueOnError)
	account := fs.String("account", "", "only events of this account `ID`")
	key := fs.String("key", "", "only events of this signing key `ID`")
	since := fs.Duration("since", 0, "only records of the last `duration` (e.g. 24h; default: all kept)")
	asJSON := fs.Bool("json", false, "print one JSON record per line")
	follow := fs.Bool("follow", false, "after the records stored, print new ones as they are stored, until interrupted")
	cfg, code := parse(fs, config.NATS|config.Outcomes, args, e)
	if code >= 0 {
		return code
	}
	if *since < 0 {
		fmt.Fprintf(e.stderr, "revoker outcomes: --since must be positive, got %s\n", *since)
		return exitUsage
	}
	// Each is a token of the subject read: a wildcard or a stray space
	// would read other keys' records, or none of a revoked key's. "_"
	// files the records of events without a valid id (SPEC §5a).
	for _, f := range []struct {
		flag string
		id   *string
	}{{"--account", account}, {"--key", key}} {
		if *f.id != "" && *f.id != "_" && !cloudflare.ValidIdentifier(*f.id) {
			// Quoted, not cleaned: the stray space or character is the news;
			// %q escapes anything a terminal would act on.
			v := *f.id
			if len(v) > 64 {
				v = v[:64] + "…"
			}
			fmt.Fprintf(e.stderr, "revoker outcomes: %s must be 1-32 characters of [A-Za-z0-9] (or _), got %q\n", f.flag, v)
			return exitUsage
		}
	}
	if !cfg.OutcomeEnabled() {
		fmt.Fprintf(e.stderr, "revoker outcomes: %s is empty: outcome records are off, there is no trail to read\n", settingName(fs, "REVOKER_OUTCOME_SUBJECT"))
		return exitUsage
	}
	c := dialFor("revoker outcomes", cfg, e)
	if c == nil {
		return exitFailed
	}
	defer c.Close()
	var from time.Time
	if *since > 0 {
		from = time.Now().Add(-*since)
	}

	var tw *tabwriter.Writer
	if !*asJSON {
		tw = tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	}
	n := 0
	// A key's records, or an account's, are read from their own subjects:
	// the cost follows what is asked for, not the size of the trail.
	acct, k := "*", "*"
	if *account != "" {
		acct = *account
	}
	if *key != "" {
		k = *key
	}
	subject := cfg.OutcomeSubject + "." + acct + "." + k
	print := func(o event.Record) error {
		n++
		if *asJSON {
			printJSON(e.stdout, o)
			return nil
		}
		if n == 1 {
			row(tw, *follow, "COMPLETED AT", "OUTCOME", "REASON", "ACCOUNT", "KEY", "STATUS", "ATTEMPTS", "CF-RAY", "EVENT ID")
		}
		status := "-"
		if o.Status != 0 {
			status = strconv.Itoa(o.Status)
		}
		outcome, note := cell(string(o.Outcome)), ""
		if o.Supersedes != 0 {
			// The record it corrects is listed too (before it): say
			// which of the two the trail believes (SPEC §4, point 3).
			// A live feed says it last, its columns being fixed.
			note = fmt.Sprintf("(supersedes record %d)", o.Supersedes)
			if !*follow {
				outcome, note = outcome+" "+note, ""
			}
		}
		cells := []string{cell(o.CompletedAt), outcome, cell(string(o.Reason)),
			cell(o.AccountID), cell(o.KeyID), status, strconv.Itoa(o.Attempts), cell(o.CFRay), cell(o.EventID)}
		if note != "" {
			cells = append(cells, note)
		}
		row(tw, *follow, cells...)
		return nil
	}
	// Anything else on a key's subject is not believed, but said (SPEC §4,
	// "The proof", point 8): someone other than a worker wrote there.
	stray := func(s queue.Stray) {
		if tw != nil {
			tw.Flush() // keep the warning beside where it was found
		}
		fmt.Fprintf(e.stderr, "revoker outcomes: %s\n", strayLine(s))
	}
	var err error
	if *follow {
		err = queue.FollowOutcomes(ctx, c.JetStream(), cfg.OutcomeStream, subject, from, print, stray)
	} else {
		err = queue.EachOutcome(ctx, c.JetStream(), cfg.OutcomeStream, subject, from, print, stray)
	}
	if tw != nil {
		tw.Flush()
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker outcomes: %v\n", streamError("outcome", cfg.OutcomeStream, err))
		return exitFailed
	}
	if n == 0 && !*follow {
		fmt.Fprintf(e.stderr, "no outcome records match in %s\n", cfg.OutcomeStream)
	}
	return exitOK
}

// followWidths are the columns of `outcomes --follow`, each wide enough
// for what the worker writes there (a time to the nanosecond, the longest
// reason, 32-character ids): a live feed cannot measure rows it has not
// seen yet, as the table of what is stored does.
var followWidths = []int{30, 13, 19, 32, 32, 6, 8, 20}

// row writes one row of the table: through tw, aligned with the others;
// in a live feed (follow), padded to followWidths and shown at once.
func row(tw *tabwriter.Writer, follow bool, cells ...string) {
	if !follow {
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
		return
	}
	var b strings.Builder
	for i, c := range cells {
		if i > 0 {
			b.WriteString("  ")
		}
		b.WriteString(c)
		if i < len(followWidths) && i < len(cells)-1 {
			b.WriteString(strings.Repeat(" ", max(followWidths[i]-utf8.RuneCountInString(c), 0)))
		}
	}
	b.WriteByte('\n')
	_, _ = tw.Write([]byte(b.String()))
	tw.Flush() // a live feed shows each record as it comes
}

// strayLine says, in one line, that a message on a key's subject is not a
// record of that key and is not believed.
func strayLine(s queue.Stray) string {
	return fmt.Sprintf("message %d on %s is not an outcome record of that key: not believed", s.Sequence, cell(s.Subject))
}
