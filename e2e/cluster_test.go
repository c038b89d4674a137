package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// With REVOKER_STREAM_REPLICAS=3 every stream, bucket and consumer the
// worker creates on the cluster has three replicas, each on its own node.
func TestWorkerCreatesR3(t *testing.T) {
	skipShort(t)
	c := queuetest.Cluster(t, 3)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	w := startWorker(t, "worker", c.URLs(), api)
	w.waitReady(30 * time.Second)

	_, js := queuetest.ConnectURL(t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	streams := []string{"REVOCATIONS", "REVOCATIONS_DLQ", "REVOCATION_OUTCOMES", "KV_revoker_attempts"}
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("stream %s: %d replicas, cluster %+v; want R3", name, info.Config.Replicas, info.Cluster)
		}
	}
	consumers := 0
	s, err := js.Stream(ctx, "REVOCATIONS")
	if err != nil {
		t.Fatal(err)
	}
	lister := s.ListConsumers(ctx)
	for info := range lister.Info() {
		consumers++
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("consumer %s: %d replicas, cluster %+v; want R3", info.Name, info.Config.Replicas, info.Cluster)
		}
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	if consumers != 2 {
		t.Errorf("%d consumers on the work stream, want 2 (one per subject)", consumers)
	}
}

// clusterRun is a cluster, a stand-in with some latency, a worker on the
// cluster's server list and a publisher.
type clusterRun struct {
	c   *queuetest.ClusterT
	api *cloudflaretest.Server
	w   *worker
	pub *publisher
	js  jetstream.JetStream
}

func newClusterRun(t *testing.T) *clusterRun {
	t.Helper()
	c := queuetest.Cluster(t, 3)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token), cloudflaretest.WithLatency(20*time.Millisecond))
	t.Cleanup(api.Close)
	// 50 calls a second makes a few hundred events last seconds, so the
	// faults land mid-run.
	w := startWorker(t, "worker", c.URLs(), api, "REVOKER_RATE_LIMIT=50")
	w.waitReady(30 * time.Second)
	_, js := queuetest.ConnectURL(t, c.URLs())
	return &clusterRun{c: c, api: api, w: w, pub: newPublisher(t, c.URLs()), js: js}
}

func deletedCount(api *cloudflaretest.Server, ks []string) int {
	return len(ks) - len(lost(api, ks))
}

// Killing the node that leads the work stream mid-run, and bringing it
// back, loses nothing: every key is revoked and the worker ends ready.
func TestNodeLossLosesNothing(t *testing.T) {
	skipShort(t)
	r := newClusterRun(t)
	before, during := keys("loss", 200), keys("down", 100)
	start := time.Now()
	r.pub.publishAll("revoke.scheduled", before)

	waitUntil(t, 30*time.Second, "a quarter revoked", func() bool { return deletedCount(r.api, before) >= len(before)/4 })
	leader := r.c.WaitStreamLeader("REVOCATIONS")
	r.c.Kill(leader)
	t.Logf("killed node %d (work stream leader) with %d of %d revoked", leader, deletedCount(r.api, before), len(before))

	// Events keep coming while the node is down, urgent ones among them.
	r.pub.publishAll("revoke.urgent", during[:20])
	r.pub.publishAll("revoke.scheduled", during[20:])
	waitUntil(t, 60*time.Second, "the first events revoked with a node down",
		func() bool { return deletedCount(r.api, before) == len(before) })

	r.c.Restart(leader)
	r.c.WaitHealthy()
	all := append(before, during...)
	waitAllDeleted(t, r.api, all, 60*time.Second)
	r.w.waitReady(30 * time.Second)
	t.Logf("all %d events revoked %v after the first publish; %d API calls", len(all), time.Since(start).Round(time.Millisecond), r.api.Count())
	recordOutcomes(t, r.js, all)
}

// Restarting every node in turn (lame duck, as an operator's rolling
// restart does) while events keep arriving loses nothing.
func TestRollingRestartLosesNothing(t *testing.T) {
	skipShort(t)
	r := newClusterRun(t)
	ks := keys("roll", 300)
	start := time.Now()

	// Publish at a steady pace for the length of the restarts.
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		published int
		pubErr    error
	)
	stop := make(chan struct{})
	wg.Go(func() {
		tick := time.NewTicker(30 * time.Millisecond)
		defer tick.Stop()
		for i, k := range ks {
			subject := "revoke.scheduled"
			if i%10 == 0 {
				subject = "revoke.urgent"
			}
			if err := r.pub.publish(subject, k); err != nil {
				mu.Lock()
				pubErr = err
				mu.Unlock()
				return
			}
			mu.Lock()
			published++
			mu.Unlock()
			select {
			case <-tick.C:
			case <-stop:
			}
		}
	})
	waitUntil(t, 30*time.Second, "load under way", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return published >= 30 && deletedCount(r.api, ks) >= 10
	})
	r.c.RollingRestart(func(i int) {
		mu.Lock()
		n := published
		mu.Unlock()
		t.Logf("node %d restarted: %d published, %d revoked", i, n, deletedCount(r.api, ks))
	})
	close(stop) // publish the rest at once
	wg.Wait()
	if pubErr != nil {
		t.Fatal(pubErr)
	}
	waitAllDeleted(t, r.api, ks, 60*time.Second)
	r.w.waitReady(30 * time.Second)
	t.Logf("all %d events revoked %v after the first publish; %d API calls", len(ks), time.Since(start).Round(time.Millisecond), r.api.Count())
	recordOutcomes(t, r.js, ks)
}

// A worker given a server list whose first entry is down connects to
// another and works. When the cluster loses its quorum the worker keeps
// running, and once the cluster is whole again it is ready and works.
func TestServerListAndQuorumLoss(t *testing.T) {
	skipShort(t)
	c := queuetest.Cluster(t, 3)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	urls := c.URL(0) + "," + c.URL(1) + "," + c.URL(2)
	// The streams and buckets, of 3 replicas, are made while all three
	// servers are up: once the cluster knows a server is down, it places
	// no new 3-replica stream, and whether it knows yet is a race.
	setup := startWorker(t, "setup", urls, api)
	setup.waitReady(30 * time.Second)
	setup.stop()
	c.Kill(0)
	w := startWorker(t, "worker", urls, api)
	w.waitReady(30 * time.Second)
	pub := newPublisher(t, urls)
	first := keys("list", 5)
	pub.publishAll("revoke.urgent", first)
	waitAllDeleted(t, api, first, 30*time.Second)

	// Two of three down, but not the worker's server: it stays connected,
	// with no quorum and so no JetStream behind it.
	on := connectedNode(t, c)
	other := 3 - on // nodes 1 and 2 are up, 0 is down
	c.Kill(other)
	quorumLost := time.Now()
	waitUntil(t, 30*time.Second, "the worker to notice", func() bool { return !w.ready() })
	t.Logf("not ready %v after the quorum was lost", time.Since(quorumLost).Round(time.Millisecond))
	if w.metric("revoker_nats_connected") != 1 {
		t.Error("the worker lost its connection to a running server")
	}
	select {
	case <-w.done:
		t.Fatal("the worker exited when the cluster lost its quorum")
	default:
	}

	c.Restart(0)
	c.Restart(other)
	c.WaitHealthy()
	w.waitReady(60 * time.Second)
	second := keys("back", 5)
	pub.publishAll("revoke.urgent", second)
	waitAllDeleted(t, api, second, 30*time.Second)
}

// connectedNode is the index of the node the worker (the client named
// "revoker") is connected to.
func connectedNode(t *testing.T, c *queuetest.ClusterT) int {
	t.Helper()
	for i := range c.Size() {
		s := c.Node(i)
		if s == nil {
			continue
		}
		cz, err := s.Connz(&server.ConnzOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, ci := range cz.Conns {
			if ci.Name == "revoker" {
				return i
			}
		}
	}
	t.Fatal("the worker is connected to no node")
	return -1
}
