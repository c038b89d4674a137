package cloudflare

// Hooks for the black-box tests in package cloudflare_test: the header
// parsers and the envelope decoder are fuzzed directly.
var (
	ParseRetryAfter  = parseRetryAfter
	ParseRateLimit   = parseRateLimit
	ParseShouldRetry = parseShouldRetry
	DecodeEnvelope   = decodeEnvelope
	// The plain envelope's reading, and the full one it must agree with.
	DecodePlainEnvelope = decodePlainEnvelope
	DecodeEnvelopeFully = decodeEnvelopeFully
	OneLine             = oneLine
	ResultStatus        = resultStatus
	// The plain ray's fast path, and the cleaning it must agree with.
	CleanRay = cleanRay
)

// MaxBody is the body read limit, for the oversized-body test.
const MaxBody = maxBody
