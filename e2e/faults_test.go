package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// faultEvents is the size of each run.
const faultEvents = 2000

func newTrailAPI(t *testing.T) (*cloudflaretest.Server, rays) {
	t.Helper()
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token), cloudflaretest.WithLatency(20*time.Millisecond))
	t.Cleanup(api.Close)
	return api, probeRays(t, api)
}

// waitRecords waits until the trail holds at least n records.
func waitRecords(t *testing.T, js jetstream.JetStream, n int, within time.Duration) {
	t.Helper()
	waitUntil(t, within, "outcome records", func() bool { return streamMsgs(js, outcomeStream) >= n })
}

// makeStreams has a worker create the streams, bucket and consumers, and
// stops it: a run then starts with every event already waiting, so the
// faults land where they are meant to.
func makeStreams(t *testing.T, urls string, api *cloudflaretest.Server, env ...string) {
	t.Helper()
	setup := startWorker(t, "setup", urls, api, env...)
	setup.waitReady(30 * time.Second)
	setup.stop()
}

// adminCreate runs an idempotent create, asking again when an attempt gets
// no answer: a cluster under load can drop an API request as its meta
// leadership moves, and the request would wait out its whole deadline.
func adminCreate(t *testing.T, create func(ctx context.Context) error) {
	t.Helper()
	var err error
	for range 4 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = create(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

// A worker killed with SIGKILL three times mid-run, each time replaced by a
// new one, leaves a true trail: one record per event, every confirmed key
// recorded revoked with its confirming call's CF-Ray, and no second DELETE
// beyond the calls in flight at the kills.
func TestTrailTrueAcrossWorkerKills(t *testing.T) {
	skipShort(t)
	start := time.Now()
	srv := queuetest.Server(t)
	url := srv.ClientURL()
	api, r := newTrailAPI(t)
	env := append([]string{"REVOKER_STREAM_REPLICAS=1"}, trailEnv...)

	makeStreams(t, url, api, env...)
	_, js := queuetest.ConnectURL(t, url)
	ks := keys("kill", faultEvents)
	newPublisher(t, url).publishAll("revoke.scheduled", ks)

	const kills = 3
	w := startWorker(t, "worker-0", url, api, env...)
	all := []*worker{w}
	for i := 1; i <= kills; i++ {
		at := i * faultEvents / (kills + 1)
		waitRecords(t, js, at, 60*time.Second)
		// Each kill hits a worker at work, not one still starting.
		waitUntil(t, 30*time.Second, w.name+" at work", func() bool {
			return w.metric("revoker_events_processed_total", `outcome="revoked"`) > 0
		})
		w.kill()
		t.Logf("SIGKILL %d with %d records stored, %d API calls made", i, streamMsgs(js, outcomeStream), api.Count()-1)
		w = startWorker(t, "worker-"+strconv.Itoa(i), url, api, env...)
		all = append(all, w)
	}
	waitSettled(t, js, len(ks), 90*time.Second)
	f := checkTrail(t, api, r, js, ks, trailConcurrency*kills)
	t.Logf("%d SIGKILLs: %v; %s; %v", kills, f, holdFigures(all...), time.Since(start).Round(time.Millisecond))
}

// startNATS starts a single JetStream server storing in dir on port.
func startNATS(t *testing.T, dir string, port int) *server.Server {
	t.Helper()
	srv, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: port, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// The single NATS server stopped mid-run and started again on the same
// store and port: the worker holds what it was doing, and the trail comes
// out true with no second DELETE (the worker itself never died).
func TestTrailTrueAcrossServerRestart(t *testing.T) {
	skipShort(t)
	start := time.Now()
	dir, port := t.TempDir(), freePort(t)
	srv := startNATS(t, dir, port)
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	url := srv.ClientURL()
	api, r := newTrailAPI(t)
	env := append([]string{"REVOKER_STREAM_REPLICAS=1"}, trailEnv...)
	makeStreams(t, url, api, env...)
	_, js := queuetest.ConnectURL(t, url)
	ks := keys("srv", faultEvents)
	newPublisher(t, url).publishAll("revoke.scheduled", ks)
	w := startWorker(t, "worker", url, api, env...)

	waitRecords(t, js, faultEvents/3, 60*time.Second)
	srv.Shutdown()
	srv.WaitForShutdown()
	stopped := time.Now()
	waitUntil(t, 30*time.Second, "the worker to notice", func() bool { return !w.ready() })
	// Down for longer than the ack wait, so the deliveries the worker
	// holds are due again when the server comes back.
	for time.Since(stopped) < outageLength {
		time.Sleep(50 * time.Millisecond) // the outage's length, not a synchronisation
	}
	srv = startNATS(t, dir, port)
	t.Logf("server down %v, %d API calls so far", time.Since(stopped).Round(time.Millisecond), api.Count()-1)

	waitSettled(t, js, len(ks), 90*time.Second)
	f := checkTrail(t, api, r, js, ks, 0)
	t.Logf("one server restart: %v; %s; %v", f, holdFigures(w), time.Since(start).Round(time.Millisecond))
}

// On a three-node cluster with R3 streams, the node the worker is
// connected to is killed mid-run and restarted: the worker moves to
// another node and the trail comes out true with no second DELETE.
func TestTrailTrueAcrossConnectedNodeLoss(t *testing.T) {
	skipShort(t)
	start := time.Now()
	c := queuetest.Cluster(t, 3)
	api, r := newTrailAPI(t)
	makeStreams(t, c.URLs(), api, trailEnv...) // R3, from fastEnv
	_, js := queuetest.ConnectURL(t, c.URLs())
	ks := keys("node", faultEvents)
	newPublisher(t, c.URLs()).publishAll("revoke.scheduled", ks)
	w := startWorker(t, "worker", c.URLs(), api, trailEnv...)

	// Records lag the calls on a cluster; the kill lands while calls are
	// in flight and many confirmations await their ledger entry and record.
	waitUntil(t, 90*time.Second, "a third of the calls made", func() bool { return api.Count()-1 >= faultEvents/3 })
	on := connectedNode(t, c)
	c.Kill(on)
	t.Logf("killed node %d (the worker's) with %d API calls made, %d records stored", on, api.Count()-1, streamMsgs(js, outcomeStream))
	waitUntil(t, 60*time.Second, "the worker on another node", func() bool {
		for i := range c.Size() {
			if s := c.Node(i); s != nil && i != on && hasClient(s, "revoker") {
				return true
			}
		}
		return false
	})
	c.Restart(on)

	waitSettled(t, js, len(ks), 120*time.Second)
	f := checkTrail(t, api, r, js, ks, 0)
	t.Logf("connected node killed and restarted: %v; %s; %v", f, holdFigures(w), time.Since(start).Round(time.Millisecond))
}

func hasClient(s *server.Server, name string) bool {
	cz, err := s.Connz(&server.ConnzOptions{})
	if err != nil {
		return false
	}
	for _, ci := range cz.Conns {
		if ci.Name == name {
			return true
		}
	}
	return false
}

// outageLength is how long the outcome stream is away: past the ack wait
// (5 s), so only the worker's keep-alive keeps its held events its own.
const outageLength = 7 * time.Second

// The outcome stream away for a while mid-run (an R1 stream whose one node
// is down; the worker and the rest of the cluster stay up): no event is
// acked without its record meanwhile, and afterwards every event has its
// one true record and no key was deleted twice.
func TestTrailTrueAcrossOutcomeStreamOutage(t *testing.T) {
	skipShort(t)
	start := time.Now()
	c := queuetest.Cluster(t, 3)
	_, admin := queuetest.ConnectURL(t, c.URLs())
	// The outcome stream as the worker would make it, but on one node.
	adminCreate(t, func(ctx context.Context) error {
		_, err := admin.CreateStream(ctx, jetstream.StreamConfig{
			Name:       outcomeStream,
			Subjects:   []string{"revoke.outcome.>"},
			Storage:    jetstream.FileStorage,
			MaxAge:     queue.OutcomeMaxAge,
			Duplicates: queue.DuplicateWindow,
			DenyDelete: true,
			DenyPurge:  true,
			Replicas:   1,
		})
		return err
	})
	holder := c.WaitStreamLeader(outcomeStream)
	// Everything else talks to the other two nodes, so the outage takes
	// away the outcome stream and nothing else.
	var others []string
	for i := range c.Size() {
		if i != holder {
			others = append(others, c.URL(i))
		}
	}
	urls := strings.Join(others, ",")

	api, r := newTrailAPI(t)
	makeStreams(t, urls, api, trailEnv...)
	_, js := queuetest.ConnectURL(t, urls)
	ks := keys("away", faultEvents)
	newPublisher(t, urls).publishAll("revoke.scheduled", ks)
	w := startWorker(t, "worker", urls, api, trailEnv...)

	waitRecords(t, js, faultEvents/3, 90*time.Second)
	c.Kill(holder)
	killed := time.Now()
	atKill := streamMsgs(js, workStream)
	waitUntil(t, 30*time.Second, "the worker holding events for their records", func() bool {
		return w.logContains("outcome record not written; holding the event")
	})
	// While the stream is away no record can be stored, so no event may
	// leave the work stream, but for records stored as the node went down.
	lowest := atKill
	for time.Since(killed) < outageLength {
		if n := streamMsgs(js, workStream); n >= 0 && n < lowest {
			lowest = n
		}
		time.Sleep(50 * time.Millisecond) // sampling during the outage, not a synchronisation
	}
	c.Restart(holder)
	t.Logf("outcome stream away %v: work stream held %d events at the kill, %d at its lowest",
		time.Since(killed).Round(time.Millisecond), atKill, lowest)
	if atKill-lowest > trailConcurrency {
		t.Errorf("%d events left the work stream while the outcome stream was away; at most %d records can have been in flight",
			atKill-lowest, trailConcurrency)
	}

	waitSettled(t, js, len(ks), 120*time.Second)
	f := checkTrail(t, api, r, js, ks, 0)
	t.Logf("outcome stream outage: %v; %s; %v", f, holdFigures(w), time.Since(start).Round(time.Millisecond))
}

// The ledger away for a while mid-run (an R1 bucket on one node, the node
// that also leads the work consumer), while the worker and the rest of the
// cluster stay up: the worker holds its confirmations until it can keep
// them, the consumer's new leader hands held events out again meanwhile,
// and afterwards every event has its one true record.
func TestTrailTrueAcrossLedgerOutage(t *testing.T) {
	skipShort(t)
	start := time.Now()
	c := queuetest.Cluster(t, 3)
	nc, admin := queuetest.ConnectURL(t, c.URLs())
	adminCreate(t, func(ctx context.Context) error {
		_, err := admin.CreateKeyValue(ctx, queue.LedgerConfig(1))
		return err
	})
	holder := c.WaitStreamLeader("KV_" + queue.LedgerBucket)
	var others []string
	for i := range c.Size() {
		if i != holder {
			others = append(others, c.URL(i))
		}
	}
	urls := strings.Join(others, ",")

	api, r := newTrailAPI(t)
	makeStreams(t, urls, api, trailEnv...)
	const consumer = "revoker-revoke_scheduled"
	// Lead the consumer from the ledger's node, so its loss also moves the
	// consumer's leadership.
	waitUntil(t, 30*time.Second, "the consumer led from the ledger's node", func() bool {
		s := c.Node(holder)
		if s.JetStreamIsConsumerLeader(server.DEFAULT_GLOBAL_ACCOUNT, workStream, consumer) {
			return true
		}
		req := fmt.Sprintf(`{"placement":{"preferred":"n%d"}}`, holder)
		_, _ = nc.Request(fmt.Sprintf("$JS.API.CONSUMER.LEADER.STEPDOWN.%s.%s", workStream, consumer), []byte(req), 2*time.Second)
		return false
	})
	_, js := queuetest.ConnectURL(t, urls)
	ks := keys("ledg", faultEvents)
	newPublisher(t, urls).publishAll("revoke.scheduled", ks)
	w := startWorker(t, "worker", urls, api, trailEnv...)

	waitUntil(t, 90*time.Second, "a third of the calls made", func() bool { return api.Count()-1 >= faultEvents/3 })
	c.Kill(holder)
	killed := time.Now()
	for time.Since(killed) < outageLength {
		time.Sleep(50 * time.Millisecond) // the outage's length, not a synchronisation
	}
	c.Restart(holder)
	t.Logf("ledger away %v, %d API calls by then", time.Since(killed).Round(time.Millisecond), api.Count()-1)

	waitSettled(t, js, len(ks), 120*time.Second)
	f := checkTrail(t, api, r, js, ks, 0)
	t.Logf("ledger outage: %v; %s; %v", f, holdFigures(w), time.Since(start).Round(time.Millisecond))
}
