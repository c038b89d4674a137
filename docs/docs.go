// Package docs holds the repository's documents that the binary serves:
// the OpenAPI description of the HTTP ingress (SPEC §11).
package docs

import _ "embed"

// OpenAPI is docs/openapi.json, the OpenAPI 3.1 description of the HTTP
// ingress, as GET /v1/openapi.json serves it.
//
//go:embed openapi.json
var OpenAPI []byte
