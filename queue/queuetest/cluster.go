package queuetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/revoker/revoker/queue"
)

// clusterWait bounds every wait for the cluster to settle. Elections on a
// busy 2-core machine take seconds, not minutes.
const clusterWait = 30 * time.Second

// ClusterT is a JetStream cluster running inside the test's process, each
// node on its own loopback ports and store folder. A node that is killed or
// shut down comes back with Restart under the same name, store and ports,
// so clients holding the server list reconnect to it.
type ClusterT struct {
	t     testing.TB
	name  string
	nodes []*clusterNode
}

type clusterNode struct {
	name        string
	dir         string
	clientPort  int
	clusterPort int

	mu  sync.Mutex
	srv *server.Server // nil while down
}

// Cluster starts an n-node JetStream cluster on loopback and waits until it
// has a meta leader that counts every node as a peer. Every node is shut
// down when the test ends.
func Cluster(t testing.TB, n int) *ClusterT {
	t.Helper()
	if n < 1 {
		t.Fatalf("cluster of %d nodes", n)
	}
	ports := freePorts(t, 2*n)
	c := &ClusterT{t: t, name: fmt.Sprintf("revoker-test-%d", ports[0])}
	for i := range n {
		c.nodes = append(c.nodes, &clusterNode{
			name:        fmt.Sprintf("n%d", i),
			dir:         t.TempDir(),
			clientPort:  ports[2*i],
			clusterPort: ports[2*i+1],
		})
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.Kill(i)
		}
	})
	// Start the nodes together: each waits for the others' routes before
	// the meta group can elect a leader.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.WaitReady()
	return c
}

// freePorts reserves n distinct loopback ports. The listeners are held open
// together so no two are the same, then released for the servers to take.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

func (c *ClusterT) opts(i int) *server.Options {
	nd := c.nodes[i]
	var routes []*url.URL
	for j, o := range c.nodes {
		if j != i {
			routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", o.clusterPort)})
		}
	}
	return &server.Options{
		ServerName: nd.name,
		Host:       "127.0.0.1",
		Port:       nd.clientPort,
		StoreDir:   nd.dir,
		Cluster: server.ClusterOpts{
			Name: c.name,
			Host: "127.0.0.1",
			Port: nd.clusterPort,
		},
		Routes: routes,
		// A short lame-duck phase keeps rolling restarts quick; the grace
		// period must stay below the duration.
		LameDuckDuration:    2 * time.Second,
		LameDuckGracePeriod: 500 * time.Millisecond,
	}
}

func (c *ClusterT) start(i int) error {
	nd := c.nodes[i]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.srv != nil {
		return fmt.Errorf("node %d already running", i)
	}
	srv, err := queue.StartServer(c.opts(i))
	if err != nil {
		return fmt.Errorf("node %s: %w", nd.name, err)
	}
	nd.srv = srv
	return nil
}

// URLs is the comma-separated list of every node's client URL, as
// REVOKER_NATS_URL takes it. It stays valid across restarts.
func (c *ClusterT) URLs() string {
	var us []string
	for _, nd := range c.nodes {
		us = append(us, fmt.Sprintf("nats://127.0.0.1:%d", nd.clientPort))
	}
	return strings.Join(us, ",")
}

// Size is the number of nodes, running or not.
func (c *ClusterT) Size() int { return len(c.nodes) }

// Node is node i's server, or nil while it is down.
func (c *ClusterT) Node(i int) *server.Server {
	nd := c.nodes[i]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.srv
}

// URL is node i's client URL.
func (c *ClusterT) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].clientPort)
}

// Kill shuts node i down at once, without handing over its leaderships:
// as near to a crash as a server in this process can come. Its store is
// kept for Restart.
func (c *ClusterT) Kill(i int) {
	if srv := c.take(i); srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// LameDuck shuts node i down the way an operator's rolling restart does:
// it stops taking clients, hands its Raft leaderships over, then closes
// its clients over a short while and stops. It returns once it has.
func (c *ClusterT) LameDuck(i int) {
	if srv := c.take(i); srv != nil {
		srv.LameDuckShutdown()
		srv.WaitForShutdown()
	}
}

// take removes node i's running server from the cluster's view and
// returns it (nil when it is not running), for the caller to stop.
func (c *ClusterT) take(i int) *server.Server {
	nd := c.nodes[i]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	srv := nd.srv
	nd.srv = nil
	return srv
}

// Restart starts node i again with its name, store and ports, and waits
// until the cluster is ready with it.
func (c *ClusterT) Restart(i int) {
	c.t.Helper()
	if err := c.start(i); err != nil {
		c.t.Fatal(err)
	}
	c.WaitReady()
}

// RollingRestart takes every node down in lame-duck mode and back, one at
// a time, waiting for the cluster (and every stream and consumer on it) to
// be healthy before the next, as an operator's rolling restart does.
// between, if not nil, runs after each node is back.
func (c *ClusterT) RollingRestart(between func(i int)) {
	c.t.Helper()
	for i := range c.nodes {
		c.LameDuck(i)
		c.Restart(i)
		c.WaitHealthy()
		if between != nil {
			between(i)
		}
	}
}

// WaitReady waits until exactly one running node leads the meta group and
// the leader counts every running node as a peer.
func (c *ClusterT) WaitReady() {
	c.t.Helper()
	c.waitFor("a meta leader", func() error {
		leaders, running := 0, 0
		var leader *server.Server
		for i := range c.nodes {
			s := c.Node(i)
			if s == nil {
				continue
			}
			running++
			if s.JetStreamIsLeader() {
				leaders++
				leader = s
			}
		}
		if leaders != 1 {
			return fmt.Errorf("%d meta leaders", leaders)
		}
		// The leader lists the peers it hears from.
		if peers := leader.JetStreamClusterPeers(); len(peers) < running {
			return fmt.Errorf("meta leader sees %d peers of %d running", len(peers), running)
		}
		return answers(leader)
	})
}

// answers asks the meta leader for the stream names, a request only the
// meta leader answers: a leader just elected can drop an API request
// without a word, and the test's first create would wait out its whole
// deadline.
func answers(leader *server.Server) error {
	nc, err := nats.Connect(leader.ClientURL(), nats.MaxReconnects(0))
	if err != nil {
		return err
	}
	defer nc.Close()
	msg, err := nc.Request("$JS.API.STREAM.NAMES", nil, 2*time.Second)
	if err != nil {
		return fmt.Errorf("the meta leader's API: %w", err)
	}
	var answer struct {
		Error *struct{ Description string } `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &answer); err != nil {
		return fmt.Errorf("the meta leader's API: %w", err)
	}
	if answer.Error != nil {
		return fmt.Errorf("the meta leader's API: %s", answer.Error.Description)
	}
	return nil
}

// WaitHealthy waits until every running node reports JetStream healthy:
// meta group current and every stream and consumer replica it holds
// caught up.
func (c *ClusterT) WaitHealthy() {
	c.t.Helper()
	c.WaitReady()
	c.waitFor("every node healthy", func() error {
		for i := range c.nodes {
			s := c.Node(i)
			if s == nil {
				continue
			}
			if h := s.Healthz(nil); h.Status != "ok" {
				return fmt.Errorf("node %d: %s %s", i, h.Status, h.Error)
			}
		}
		return nil
	})
}

// StreamLeader is the index of the running node leading stream (in the
// global account), or -1 when none does.
func (c *ClusterT) StreamLeader(stream string) int {
	for i := range c.nodes {
		if s := c.Node(i); s != nil && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// WaitStreamLeader waits until a running node leads stream and returns its
// index.
func (c *ClusterT) WaitStreamLeader(stream string) int {
	c.t.Helper()
	leader := -1
	c.waitFor("a leader of stream "+stream, func() error {
		if leader = c.StreamLeader(stream); leader < 0 {
			return fmt.Errorf("no leader")
		}
		return nil
	})
	return leader
}

func (c *ClusterT) waitFor(what string, cond func() error) {
	c.t.Helper()
	deadline := time.Now().Add(clusterWait)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster: waiting for %s: %v", what, err)
		}
		<-tick.C
	}
}

// Answered runs try, each time bounded by 10 s, again while it fails only
// by running out of that time and ctx lasts, as the worker's setup does
// (queue.Consumer binds so). On a loaded machine a cluster can leave a
// JetStream API request unanswered (its meta leader moving); a test of
// what the cluster ends with must not fail on that.
func Answered(ctx context.Context, try func(context.Context) error) error {
	for {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := try(tctx)
		cancel()
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return err
		}
	}
}
