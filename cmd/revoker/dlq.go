package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

const dlqUsage = `Usage:
  revoker dlq list [--reason R] [--limit N] [--json]
  revoker dlq replay --all | --seq N,... | --reason R [--dry-run] [--json]

Run "revoker dlq list -h" or "revoker dlq replay -h" for the flags.
`

func dlqCmd(ctx context.Context, args []string, e env) int {
	e = lockedEnv(e)
	if len(args) == 0 {
		fmt.Fprint(e.stderr, "revoker dlq: which one, list or replay?\n\n"+dlqUsage)
		return exitUsage
	}
	switch args[0] {
	case "list":
		return dlqList(ctx, args[1:], e)
	case "replay":
		return dlqReplay(ctx, args[1:], e)
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, dlqUsage)
		return exitOK
	}
	fmt.Fprintf(e.stderr, "revoker dlq: unknown command %q\n\n%s", args[0], dlqUsage)
	return exitUsage
}

// defaultListLimit keeps a flooded dead-letter stream from flooding the
// terminal; --limit 0 lifts it.
const defaultListLimit = 1000

func dlqList(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("dlq list", flag.ContinueOnError)
	reason := fs.String("reason", "", "only records with this `reason` (e.g. api_rejected)")
	limit := fs.Int("limit", defaultListLimit, "show at most `N` records, oldest first (0: all)")
	asJSON := fs.Bool("json", false, "print one JSON object per record")
	cfg, code := parse(fs, config.NATS|config.DeadLetters, args, e)
	if code >= 0 {
		return code
	}
	if *limit < 0 {
		fmt.Fprintf(e.stderr, "revoker dlq list: --limit must be 0 or more, got %d\n", *limit)
		return exitUsage
	}
	if err := knownReason(*reason); err != nil {
		fmt.Fprintf(e.stderr, "revoker dlq list: %v\n", err)
		return exitUsage
	}
	c := dialFor("revoker dlq list", cfg, e)
	if c == nil {
		return exitFailed
	}
	defer c.Close()
	js := c.JetStream()
	var filter func(queue.DeadLetterRecord) bool
	if *reason != "" {
		filter = func(r queue.DeadLetterRecord) bool { return r.Reason == *reason }
	}
	n := *limit
	if n > 0 {
		n++ // one more tells whether there are more
	}
	recs, err := queue.ListDeadLetters(ctx, js, cfg.DLQStream, filter, n)
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker dlq list: %v\n", streamError("dead-letter", cfg.DLQStream, err))
		return exitFailed
	}
	more := *limit > 0 && len(recs) > *limit
	if more {
		recs = recs[:*limit]
	}
	if *asJSON {
		for _, r := range recs {
			printJSON(e.stdout, dlqRow(r))
		}
	} else if len(recs) > 0 {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tFAILED AT\tREASON\tSOURCE SUBJECT\tACCOUNT\tKEY\tSTATUS\tATTEMPTS\tDETAIL")
		for _, r := range recs {
			row := dlqRow(r)
			at := r.FailedAt
			if at.IsZero() {
				at = r.StoredAt
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Sequence, at.Format(time.RFC3339),
				cell(r.Reason), cell(r.SourceSubject), cell(row.AccountID), cell(row.KeyID), cell(r.Status), r.Attempts, cell(r.Detail))
		}
		tw.Flush()
	}
	switch {
	case len(recs) == 0 && *reason != "":
		fmt.Fprintf(e.stderr, "no dead letters with reason %s in %s\n", cell(*reason), cfg.DLQStream)
	case len(recs) == 0:
		fmt.Fprintf(e.stderr, "no dead letters in %s\n", cfg.DLQStream)
	case more:
		fmt.Fprintf(e.stderr, "showing the first %d; --limit 0 shows all\n", *limit)
	}
	return exitOK
}

// deadLetterRow is a record as `dlq list --json` prints it: with the
// event's account and key when its body is a valid event (or CloudEvent,
// by its kept Content-Type), and the body.
type deadLetterRow struct {
	queue.DeadLetterRecord
	AccountID string `json:"account_id,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
	Body      string `json:"body"`
}

func dlqRow(r queue.DeadLetterRecord) deadLetterRow {
	row := deadLetterRow{DeadLetterRecord: r, Body: string(r.Body)}
	// The worker's rules, so an identifier shown is one it would accept;
	// the body of an invalid event is shown only in --json.
	if ev, err := event.DecodeMessage(r.ContentType, r.Body); err == nil {
		row.AccountID, row.KeyID = ev.AccountID, ev.KeyID
	}
	return row
}

func dlqReplay(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("dlq replay", flag.ContinueOnError)
	seqList := fs.String("seq", "", "replay the records with these dead-letter `sequences` (comma-separated)")
	reason := fs.String("reason", "", "replay the records with this `reason`")
	all := fs.Bool("all", false, "replay every record")
	dryRun := fs.Bool("dry-run", false, "print what would be replayed, change nothing")
	asJSON := fs.Bool("json", false, "print one JSON object per record")
	// The outcome records too: a replay consumed before a run repeated is
	// known by its event's record.
	cfg, code := parse(fs, config.NATS|config.Work|config.DeadLetters|config.Outcomes, args, e)
	if code >= 0 {
		return code
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "revoker dlq replay: "+format+"\n", a...)
		return exitUsage
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	switch {
	case !*all && !given["seq"] && !given["reason"]:
		return usageErr("say which records to replay: --all, --seq N,... or --reason R")
	case *all && given["seq"]:
		return usageErr("give --all or --seq, not both")
	case given["reason"] && (*all || given["seq"]):
		// Alternatives (SPEC §7): taken together, one would quietly narrow
		// the other.
		return usageErr("give --reason alone, not with --all or --seq")
	case given["reason"] && *reason == "":
		return usageErr("--reason needs a reason (e.g. api_rejected)")
	}
	if err := knownReason(*reason); err != nil {
		return usageErr("%v", err)
	}
	var seqs []uint64
	if given["seq"] {
		var err error
		if seqs, err = parseSeqs(*seqList); err != nil {
			return usageErr("--seq: %v", err)
		}
	}

	c := dialFor("revoker dlq replay", cfg, e)
	if c == nil {
		return exitFailed
	}
	defer c.Close()
	js := c.JetStream()

	failed, seen := 0, 0
	replayer, err := queue.NewReplayer(ctx, js, cfg.Topology())
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker dlq replay: %v\n", streamError("dead-letter", cfg.DLQStream, err))
		return exitFailed
	}
	replay := func(r queue.DeadLetterRecord) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		seen++
		row := dlqRow(r)
		what := fmt.Sprintf("event %s (reason %s, account %s, key %s)", cell(r.EventID), cell(r.Reason), cell(row.AccountID), cell(row.KeyID))
		if err := replayer.Check(r); err != nil {
			failed++
			fmt.Fprintf(e.stderr, "dead letter %d: %s: %v; left in place\n", r.Sequence, what, err)
			return nil
		}
		if *dryRun {
			if *asJSON {
				printJSON(e.stdout, struct {
					DryRun bool `json:"dry_run"`
					deadLetterRow
				}{true, row})
			} else {
				fmt.Fprintf(e.stdout, "would replay %d: %s to %s as %s\n", r.Sequence, what, cell(r.SourceSubject), queue.ReplayMsgID(r.Sequence))
			}
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, queue.RequestTimeout)
		res, err := replayer.Republish(rctx, r)
		cancel()
		if err != nil {
			failed++
			fmt.Fprintf(e.stderr, "dead letter %d: %v\n", r.Sequence, err)
			return nil
		}
		switch {
		case *asJSON:
			printJSON(e.stdout, res)
		case res.Displaced != "":
			// Worth the operator's attention: someone published under the
			// replay's id to make it vanish as a duplicate.
			fmt.Fprintf(e.stdout, "replayed %d: %s to %s as %s, since another message already took its id %s (work sequence %d); %s\n",
				r.Sequence, what, res.Subject, res.MsgID, res.Displaced, res.WorkSequence, removedByWorker)
		case res.Taken:
			fmt.Fprintf(e.stdout, "replayed %d: %s was republished to %s by an earlier run (work sequence %d) and a worker has taken it, but could not remove the record; nothing republished: the record may go (an administrator of the worker's account may remove it)\n",
				r.Sequence, what, res.Subject, res.WorkSequence)
		case res.Duplicate:
			fmt.Fprintf(e.stdout, "replayed %d: %s was already republished to %s by an earlier run (work sequence %d); %s\n",
				r.Sequence, what, res.Subject, res.WorkSequence, removedByWorker)
		default:
			fmt.Fprintf(e.stdout, "replayed %d: %s to %s (work sequence %d); %s\n",
				r.Sequence, what, res.Subject, res.WorkSequence, removedByWorker)
		}
		return nil
	}

	if seqs != nil {
		for _, seq := range seqs {
			gctx, cancel := context.WithTimeout(ctx, queue.RequestTimeout)
			r, err := queue.GetDeadLetter(gctx, js, cfg.DLQStream, seq)
			cancel()
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
				fmt.Fprintf(e.stderr, "dead letter %d: not in %s (already replayed, or never written)\n", seq, cfg.DLQStream)
				failed++
			case err != nil:
				fmt.Fprintf(e.stderr, "revoker dlq replay: %v\n", streamError("dead-letter", cfg.DLQStream, err))
				return exitFailed
			case *reason != "" && r.Reason != *reason:
				fmt.Fprintf(e.stderr, "dead letter %d: reason %s, not %s; skipped\n", seq, cell(r.Reason), cell(*reason))
			default:
				_ = replay(r) // fails only when interrupted: said below
			}
			if ctx.Err() != nil {
				fmt.Fprintln(e.stderr, "revoker dlq replay: interrupted; running it again is safe")
				return exitFailed
			}
		}
	} else {
		// Replayed as read, up to the last record stored when the run
		// began: memory stays bounded whatever the number of records, and
		// a replay that fails again makes a new record this run leaves
		// alone.
		err := queue.EachDeadLetter(ctx, js, cfg.DLQStream, func(r queue.DeadLetterRecord) error {
			if *reason != "" && r.Reason != *reason {
				return nil
			}
			return replay(r)
		})
		if ctx.Err() != nil {
			fmt.Fprintln(e.stderr, "revoker dlq replay: interrupted; running it again is safe")
			return exitFailed
		}
		if err != nil {
			fmt.Fprintf(e.stderr, "revoker dlq replay: %v\n", streamError("dead-letter", cfg.DLQStream, err))
			return exitFailed
		}
	}
	if seen == 0 && failed == 0 {
		fmt.Fprintln(e.stderr, "no dead letters to replay")
		return exitOK
	}
	if failed > 0 {
		return exitFailed
	}
	return exitOK
}

// removedByWorker ends each replay's line: the operator may not remove a
// record (no one who may publish events can make one vanish, SPEC §5),
// the worker does, once it takes the replay.
const removedByWorker = "a worker removes the record when it takes the event"

// parseSeqs parses "3,5,8" into distinct sequences, in the order given.
func parseSeqs(s string) ([]uint64, error) {
	var out []uint64
	seen := map[uint64]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a sequence number (1 or more)", f)
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, nil
}

// knownReason refuses a --reason no record can have: a typo during an
// incident must not pass for "nothing to replay".
func knownReason(reason string) error {
	if reason == "" || slices.Contains(event.Reasons, event.Reason(reason)) {
		return nil
	}
	return fmt.Errorf("--reason %q is not a dead-letter reason (%s)", cell(reason), strings.Join(event.Names(event.Reasons), ", "))
}
