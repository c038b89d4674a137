package cloudflare

// Hooks for the black-box tests in package cloudflare_test: the header
// parsers and the envelope decoder are fuzzed directly.
var (
	ParseRetryAfter  = parseRetryAfter
	ParseRateLimit   = parseRateLimit
	ParseShouldRetry = parseShouldRetry
	DecodeEnvelope   = decodeEnvelope
	OneLine          = oneLine
)

// MaxBody is the body read limit, for the oversized-body test.
const MaxBody = maxBody
