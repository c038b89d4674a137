package cloudflare

// Hooks for the key-list tests in package cloudflare_test.
var (
	ParseKeyResult = parseKeyResult
	FoldID         = foldID
)

// MaxListBody is the key list's body read limit.
const MaxListBody = maxListBody
