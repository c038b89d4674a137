// Command revoker turns "revoke key" events on NATS JetStream into calls of
// Cloudflare's Delete signing keys endpoint. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/logging"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

// Exit statuses (SPEC §7).
const (
	exitOK      = 0
	exitFailed  = 1
	exitUsage   = 2
	exitTimeout = 3
)

func main() {
	if _, set := os.LookupEnv("GOGC"); !set {
		// The live heap is small (events in hand) and the garbage per event
		// is HTTP and NATS plumbing: collecting at 5x rather than 2x the
		// live heap costs a few MiB and saves much of the GC's CPU.
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], env{os.Stdin, os.Stdout, os.Stderr, os.LookupEnv})
	stop()
	os.Exit(code)
}

// env is what a command may touch of the outside world, so the whole
// program runs inside a test.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	lookup         func(string) (string, bool)
}

const usage = `revoker — revoke Cloudflare Stream signing keys from NATS JetStream events

Usage:
  revoker serve [flags]              run the worker (--embedded-nats DIR for a built-in JetStream)
  revoker publish --account A --key K [--urgent | --subject S] [--reason R]
                  [--requested-by W] [--id ID] [--wait [--timeout D]] [--json]
  revoker publish --from-file F|-    one event per line (same flags)
  revoker dlq list [--reason R] [--limit N] [--json]
  revoker dlq replay --all | --seq N,... | --reason R [--dry-run] [--json]
  revoker outcomes [--account A] [--key K] [--since D] [--json] [--follow]
  revoker verify [--account A] [--since D] [--json]
                                     print keys the trail says are gone that the API still lists
  revoker demo [--keep | --serve]    everything in one process, no outside services
  revoker version

Every setting is an environment variable with a matching flag; run
"revoker serve -h" for the list.
`

func run(ctx context.Context, args []string, e env) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serveCmd(ctx, rest, e)
	case "demo":
		return demoCmd(ctx, rest, e)
	case "publish":
		return publishCmd(ctx, rest, e)
	case "dlq":
		return dlqCmd(ctx, rest, e)
	case "outcomes":
		return outcomesCmd(ctx, rest, e)
	case "verify":
		return verifyCmd(ctx, rest, e)
	case "version", "--version":
		if len(rest) > 0 {
			fmt.Fprintf(e.stderr, "revoker version: unexpected argument %q\n", rest[0])
			return exitUsage
		}
		fmt.Fprintf(e.stdout, "revoker %s (commit %s, %s)\n", version, commit, runtime.Version())
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, usage)
		return exitOK
	}
	fmt.Fprintf(e.stderr, "revoker: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// parse parses a command's flags and loads the settings of sections. It
// returns a non-negative exit status when the command must stop here.
func parse(fs *flag.FlagSet, sections config.Section, args []string, e env) (config.Config, int) {
	loader, code := parseFlags(fs, sections, args, e)
	if code >= 0 {
		return config.Config{}, code
	}
	return load(fs, loader, e)
}

// parseFlags is parse's first half: the flags, and the loader of sections
// that reads the settings after them.
func parseFlags(fs *flag.FlagSet, sections config.Section, args []string, e env, only ...string) (*config.Loader, int) {
	loader := config.Register(fs, sections, only...)
	// A bad flag is one line naming it (SPEC §6), not the error followed
	// by every flag's help: that is for -h, on stdout.
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(e.stderr)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(e.stdout)
		fmt.Fprintf(e.stdout, "Usage of revoker %s:\n", fs.Name())
		fs.PrintDefaults()
		fs.SetOutput(e.stderr)
		return nil, exitOK
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker %s: %v (revoker %s -h lists the flags)\n", fs.Name(), err, fs.Name())
		return nil, exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "revoker %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return nil, exitUsage
	}
	return loader, -1
}

// load is parse's second half: the settings loader reads.
func load(fs *flag.FlagSet, loader *config.Loader, e env) (config.Config, int) {
	cfg, err := loader.Load(e.lookup)
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker %s: %v\n", fs.Name(), err)
		return config.Config{}, exitUsage
	}
	// On stderr, whatever the log level: a secret in the process table is
	// for the operator to see at start (SPEC §6).
	for _, w := range config.SecretFlagWarnings(fs) {
		fmt.Fprintf(e.stderr, "revoker %s: warning: %s\n", fs.Name(), w)
	}
	return cfg, -1
}

// newLogger builds the structured logger of cfg, writing to w.
func newLogger(cfg config.Config, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.LogLevel)
	if err != nil {
		return nil, err
	}
	return logging.New(level, cfg.LogFormat, w), nil
}
