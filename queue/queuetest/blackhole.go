package queuetest

import (
	"net"
	"sync"
	"testing"
)

// Blackhole is a TCP proxy on 127.0.0.1 that can cut the path between its
// clients and the target silently: Cut stops forwarding in both
// directions but closes nothing and sends no reset, as a partition or a
// dead switch does. Bytes sent meanwhile wait in the sockets' buffers, as
// TCP retransmissions would; Heal delivers them and forwards again. A
// connection accepted while the path is cut reaches the target only after
// Heal.
type Blackhole struct {
	ln     net.Listener
	target string

	// mu guards the state below; forward writes under its read lock, so
	// Cut returns only once no write is under way.
	mu     sync.RWMutex
	cut    bool
	closed bool
	healed chan struct{} // closed by Heal (and close): waiters go on

	connsMu sync.Mutex
	conns   []net.Conn
	ended   bool // no connection is kept any more

	wg sync.WaitGroup
}

// NewBlackhole starts a proxy to target (host:port), forwarding, and closes
// it when the test ends.
func NewBlackhole(t testing.TB, target string) *Blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Blackhole{ln: ln, target: target, healed: make(chan struct{})}
	close(b.healed)
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(b.close)
	return b
}

// URL is the proxy's address as a NATS URL.
func (b *Blackhole) URL() string { return "nats://" + b.ln.Addr().String() }

// Cut stops forwarding, in both directions, on every connection.
func (b *Blackhole) Cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.cut && !b.closed {
		b.cut = true
		b.healed = make(chan struct{})
	}
}

// Heal forwards again what was held and what comes next.
func (b *Blackhole) Heal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cut {
		b.cut = false
		close(b.healed)
	}
}

// pass waits while the path is cut, then runs send (if any) before the
// path can be cut again; false once the proxy is closed.
func (b *Blackhole) pass(send func()) bool {
	for {
		b.mu.RLock()
		closed, cut, healed := b.closed, b.cut, b.healed
		if !closed && !cut && send != nil {
			send()
		}
		b.mu.RUnlock()
		switch {
		case closed:
			return false
		case !cut:
			return true
		}
		<-healed
	}
}

// track keeps c to close with the proxy; false if the proxy is closed.
func (b *Blackhole) track(c net.Conn) bool {
	b.connsMu.Lock()
	defer b.connsMu.Unlock()
	if b.ended {
		return false
	}
	b.conns = append(b.conns, c)
	return true
}

func (b *Blackhole) accept() {
	defer b.wg.Done()
	for {
		client, err := b.ln.Accept()
		if err != nil {
			return
		}
		if !b.track(client) {
			client.Close()
			return
		}
		b.wg.Add(1)
		go b.serve(client)
	}
}

// serve joins client to the target once the path is open, then forwards
// each way until either side ends.
func (b *Blackhole) serve(client net.Conn) {
	defer b.wg.Done()
	defer client.Close()
	if !b.pass(nil) {
		return
	}
	server, err := net.Dial("tcp", b.target)
	if err != nil {
		return
	}
	if !b.track(server) {
		server.Close()
		return
	}
	defer server.Close()
	done := make(chan struct{}, 2)
	go func() { b.forward(server, client); done <- struct{}{} }()
	go func() { b.forward(client, server); done <- struct{}{} }()
	<-done
	// One side ended: end the other, as a proxy closing both halves does.
	client.Close()
	server.Close()
	<-done
}

// forward copies src to dst while the path is open. What is read while
// the path is cut is held until Heal (and nothing more is read meanwhile),
// so nothing passes once Cut has returned.
func (b *Blackhole) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			var werr error
			if !b.pass(func() { _, werr = dst.Write(buf[:n]) }) || werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// close stops the proxy and every connection through it.
func (b *Blackhole) close() {
	b.ln.Close()
	// The connections first: a write under way ends with them, and lets
	// go of the read lock that the state below needs.
	b.connsMu.Lock()
	b.ended = true
	for _, c := range b.conns {
		c.Close()
	}
	b.conns = nil
	b.connsMu.Unlock()
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		if b.cut {
			close(b.healed)
		}
	}
	b.mu.Unlock()
	b.wg.Wait()
}
