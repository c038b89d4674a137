package queue

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// RunEmbedded starts a JetStream server inside the process, storing in dir
// and listening on the address of natsURL (the first one of a list); port
// -1 picks a free port. The caller shuts it down.
func RunEmbedded(dir, natsURL string) (*server.Server, error) {
	first, _, _ := strings.Cut(natsURL, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil {
		return nil, fmt.Errorf("embedded nats: address: %w", err)
	}
	host, portStr, err := net.SplitHostPort(u.Host)
	if err != nil {
		host, portStr = u.Host, "4222"
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: port %q: %w", portStr, err)
	}
	return StartServer(&server.Options{Host: host, Port: port, StoreDir: dir})
}

// StartServer starts a JetStream server with opts (JetStream is turned on)
// and waits until it takes connections.
func StartServer(opts *server.Options) (*server.Server, error) {
	opts.JetStream = true
	opts.NoSigs = true
	opts.NoLog = true
	if opts.ServerName == "" {
		opts.ServerName = "revoker-embedded"
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded nats: not ready after 10s")
	}
	return s, nil
}
