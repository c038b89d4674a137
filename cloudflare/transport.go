package cloudflare

import "net/http"

// DefaultTransport is the transport a Client uses when Config.Transport is
// nil, for a caller that wraps it (to trace calls, say).
func DefaultTransport() http.RoundTripper { return defaultTransport() }
