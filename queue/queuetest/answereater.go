package queuetest

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// AnswerEater is a TCP proxy to a NATS server that, on the first
// connection carrying Publish, forwards it, drops
// everything the server sends from then on, and cuts the connection once
// the event is stored: stored, its answer lost. Later connections pass,
// except while away is set: then they are cut at once.
type AnswerEater struct {
	Target  string      // the server's address
	Publish []byte      // what the publish to eat the answer of carries
	Stored  func() bool // whether the event is stored
	Ate     atomic.Bool // set once the publish was seen
	Away    atomic.Bool // while set, new connections are cut at once
	// Lose, when set, loses the publish itself instead, and is called
	// before the connection is cut: it never reached the server.
	Lose func()
	// Hook, when set, is called before the publish is forwarded, and
	// nothing is lost.
	Hook func()
}

// Listen starts the proxy and returns its address.
func (p *AnswerEater) Listen(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c)
		}
	}()
	return ln.Addr().String()
}

func (p *AnswerEater) pipe(client net.Conn) {
	if p.Away.Load() {
		client.Close()
		return
	}
	server, err := net.Dial("tcp", p.Target)
	if err != nil {
		client.Close()
		return
	}
	var (
		eating atomic.Bool
		once   sync.Once
	)
	cut := func() { once.Do(func() { client.Close(); server.Close() }) }
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				eat := !p.Ate.Load() && bytes.Contains(buf[:n], p.Publish)
				if eat && p.Hook != nil {
					p.Ate.Store(true)
					p.Hook()
					eat = false
				}
				if eat {
					p.Ate.Store(true)
					eating.Store(true)
				}
				if eat && p.Lose != nil {
					p.Lose()
					cut()
					return
				}
				if _, werr := server.Write(buf[:n]); werr != nil {
					cut()
					return
				}
				if eat {
					// Cut once stored (or after 10 s: the test then
					// fails on the count).
					for deadline := time.Now().Add(10 * time.Second); !p.Stored() && time.Now().Before(deadline); {
						time.Sleep(5 * time.Millisecond)
					}
					cut()
					return
				}
			}
			if err != nil {
				cut()
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 && !eating.Load() {
			if _, werr := client.Write(buf[:n]); werr != nil {
				cut()
				return
			}
		}
		if err != nil {
			cut()
			return
		}
	}
}
