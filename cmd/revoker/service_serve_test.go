package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/service"
)

// `revoker serve` runs the NATS service: a revoke through it answers the
// revoked record, and discovery finds it under the binary's version.
func TestServeRunsNATSService(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	s.api.AddKey("acct1", "svckey")

	m := nats.NewMsg(service.RevokeSubject)
	m.Data = []byte(`{"account_id":"acct1","key_id":"svckey"}`)
	m.Header.Set(service.HeaderWait, "15s")
	reply, err := s.nc.RequestMsg(m, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := reply.Header.Get(micro.ErrorCodeHeader); code != "" {
		t.Fatalf("error %s: %s", code, reply.Header.Get(micro.ErrorHeader))
	}
	var rec event.Record
	if err := json.Unmarshal(reply.Data, &rec); err != nil || rec.Outcome != event.Revoked || rec.KeyID != "svckey" {
		t.Fatalf("reply %s (%v), want the revoked record", reply.Data, err)
	}

	ping, err := s.nc.Request("$SRV.PING."+service.Name, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var p micro.Ping
	if err := json.Unmarshal(ping.Data, &p); err != nil || p.Name != service.Name || p.Version == "" {
		t.Fatalf("ping %s (%v)", ping.Data, err)
	}
}
