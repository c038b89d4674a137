package queue_test

import (
	"flag"
	"net"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

// outageServer is a JetStream server a test stops and starts again on the
// same port and store, as a NATS restart does, with the configuration of
// sections that reaches it.
type outageServer struct {
	t    *testing.T
	dir  string
	port int
	srv  *server.Server
	cfg  config.Config
}

// newOutageServer starts the server on a free port; it is shut down when
// the test ends.
func newOutageServer(t *testing.T, sections config.Section) *outageServer {
	t.Helper()
	o := &outageServer{t: t, dir: t.TempDir(), port: -1}
	o.start()
	o.port = o.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(o.stop)
	cfg, err := config.Register(flag.NewFlagSet("t", flag.ContinueOnError), sections).Load(func(k string) (string, bool) {
		if k == "REVOKER_NATS_URL" {
			return o.srv.ClientURL(), true
		}
		return "", false
	})
	if err != nil {
		t.Fatal(err)
	}
	o.cfg = cfg
	return o
}

// start starts the server (again).
func (o *outageServer) start() {
	o.t.Helper()
	srv, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: o.port, StoreDir: o.dir})
	if err != nil {
		o.t.Fatal(err)
	}
	o.srv = srv
}

// stop shuts the server down, if it runs.
func (o *outageServer) stop() {
	if o.srv != nil {
		o.srv.Shutdown()
		o.srv.WaitForShutdown()
		o.srv = nil
	}
}
