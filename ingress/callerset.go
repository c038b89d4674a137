package ingress

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/logging"
)

// callersCheckInterval is how often the callers file is read: a change is
// acted on once two reads in a row see it, within 5 s as for every other
// file revoker follows (SPEC §6).
var callersCheckInterval = 2 * time.Second

// callerSet is the callers in use: who may call, and each one's rate.
// A request takes one set and keeps it (call.set), so that a change of
// the file in between never finds a caller without its rate.
type callerSet struct {
	callers *Callers
	auth    authenticator
	limits  map[string]*bucket
	digest  [sha256.Size]byte
}

// newCallerSet makes the set of cs; a caller of old with the same name
// and rate keeps its bucket, so a reload does not refill it.
func newCallerSet(cs *Callers, old *callerSet) *callerSet {
	set := &callerSet{callers: cs, auth: newAuthenticator(cs), limits: make(map[string]*bucket, len(cs.List)), digest: cs.digest()}
	for _, c := range cs.List {
		if old != nil {
			if b, ok := old.limits[c.Name]; ok && b.rate == c.Rate {
				set.limits[c.Name] = b
				continue
			}
		}
		set.limits[c.Name] = newBucket(c.Rate)
	}
	return set
}

// digest sums everything that decides who may call and what: names,
// secrets, rights and rates, in file order.
func (cs *Callers) digest() [sha256.Size]byte {
	var b bytes.Buffer
	field := func(p []byte) {
		b.Write(binary.AppendUvarint(nil, uint64(len(p))))
		b.Write(p)
	}
	for _, c := range cs.List {
		field([]byte(c.Name))
		field(c.tokenHash)
		field(c.secret)
		accounts := make([]string, 0, len(c.Accounts))
		for a, ok := range c.Accounts {
			if ok {
				accounts = append(accounts, a)
			}
		}
		slices.Sort(accounts)
		for _, a := range accounts {
			field([]byte(a))
		}
		field(binary.BigEndian.AppendUint64(nil, math.Float64bits(c.Rate)))
		field([]byte{boolByte(c.Urgent), boolByte(c.AnyAccount)})
	}
	return sha256.Sum256(b.Bytes())
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// watchCallers reads the callers file every callersCheckInterval until ctx
// ends, and puts what it holds in use once two reads in a row agree: a
// file caught half written is neither used nor reported. A removed
// caller's token is refused from then on, without a restart (a leaked
// token is taken out of the file). A file that does not load keeps the
// callers in use, and is logged once per distinct content and error.
func (s *Server) watchCallers(ctx context.Context, path string) {
	t := time.NewTicker(callersCheckInterval)
	defer t.Stop()
	var prev, reported string // what the last read saw, what was last said
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cs, err := LoadCallers(path)
		seen := ""
		if err != nil {
			seen = "error: " + err.Error()
		} else {
			d := cs.digest()
			seen = string(d[:])
		}
		again := seen == prev
		prev = seen
		if !again {
			continue
		}
		cur := s.callers.Load()
		switch {
		case err != nil:
			if seen != reported {
				reported = seen
				s.log.Error("ingress: the callers file cannot be used; the callers in use stay", zap.Error(err))
			}
		case cs.digest() != cur.digest:
			reported = ""
			s.m.zero(cs.Names())
			s.callers.Store(newCallerSet(cs, cur))
			if s.cfg.OnCallers != nil {
				s.cfg.OnCallers(cs)
			}
			s.log.Info("ingress: the callers file changed; its callers are in use",
				zap.Strings("callers", logging.Few(cs.Names())), zap.Strings("was", logging.Few(cur.callers.Names())))
		default:
			reported = ""
		}
	}
}
