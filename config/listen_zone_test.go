package config_test

import (
	"net"
	"testing"

	"github.com/revoker/revoker/config"
)

// TestListenAddrWithIPv6Zone (be97fda): checkListenAddr now refuses a
// host that net.ParseIP does not read. An IPv6 link-local address with
// its zone ("[fe80::1%lo]:8080") is an IP address Go listens on
// (net.Listen accepts it), but ParseIP refuses the zone: the start stops
// with exit 2, calling it "not an IP address or localhost".
func TestListenAddrWithIPv6Zone(t *testing.T) {
	const addr = "[fe80::1%lo]:8080"
	if _, err := net.ResolveTCPAddr("tcp", addr); err != nil {
		t.Skipf("the platform does not read %s: %v", addr, err)
	}
	e := baseEnv()
	e["REVOKER_HTTP_ADDR"] = addr
	if _, err := load(t, config.All, e); err != nil {
		t.Errorf("REVOKER_HTTP_ADDR=%s refused: %v", addr, err)
	}
}
