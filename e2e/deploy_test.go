package e2e

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/revoker/revoker/queue"
)

// The example cluster in deploy/nats-cluster parses, names three distinct
// JetStream nodes of one cluster routed to one another, and forms a
// cluster with a meta leader when started (on free ports and a temporary
// store instead of the files' own).
func TestExampleNATSClusterConfig(t *testing.T) {
	skipShort(t)
	var opts []*server.Options
	for i := 1; i <= 3; i++ {
		o, err := server.ProcessConfigFile(filepath.Join("..", "deploy", "nats-cluster", fmt.Sprintf("n%d.conf", i)))
		if err != nil {
			t.Fatalf("n%d.conf: %v", i, err)
		}
		opts = append(opts, o)
	}
	names, stores := map[string]bool{}, map[string]bool{}
	byRoutePort := map[int]int{} // cluster port -> node index
	for i, o := range opts {
		if !o.JetStream || o.Cluster.Name != "revoker" || o.Host != "127.0.0.1" || o.Cluster.Host != "127.0.0.1" {
			t.Errorf("n%d: jetstream %v, cluster %q, hosts %s %s", i+1, o.JetStream, o.Cluster.Name, o.Host, o.Cluster.Host)
		}
		names[o.ServerName], stores[o.StoreDir] = true, true
		byRoutePort[o.Cluster.Port] = i
	}
	if len(names) != 3 || len(stores) != 3 || len(byRoutePort) != 3 {
		t.Fatalf("names %v, stores %v, cluster ports %v: want three distinct of each", names, stores, byRoutePort)
	}
	ports := freePortsN(t, 6)
	for i, o := range opts {
		if len(o.Routes) != 2 {
			t.Fatalf("n%d has %d routes, want the other two", i+1, len(o.Routes))
		}
		for j, r := range o.Routes {
			p, _ := strconv.Atoi(r.Port())
			other, ok := byRoutePort[p]
			if !ok || other == i {
				t.Fatalf("n%d routes to %s, not to another node", i+1, r)
			}
			o.Routes[j] = &url.URL{Scheme: r.Scheme, Host: "127.0.0.1:" + strconv.Itoa(ports[2*other+1])}
		}
	}
	for i, o := range opts {
		o.Port, o.Cluster.Port, o.HTTPPort = ports[2*i], ports[2*i+1], 0
		o.StoreDir = t.TempDir()
	}
	srvs := make([]*server.Server, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, o := range opts {
		wg.Go(func() { srvs[i], errs[i] = queue.StartServer(o) })
	}
	wg.Wait()
	for i, s := range srvs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	waitUntil(t, 30*time.Second, "a meta leader that sees three peers", func() bool {
		for _, s := range srvs {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == 3 {
				return true
			}
		}
		return false
	})
}

func freePortsN(t *testing.T, n int) []int {
	t.Helper()
	seen := map[int]bool{}
	var out []int
	for len(out) < n {
		p := freePort(t)
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}
