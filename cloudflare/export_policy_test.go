package cloudflare

// Hook for the Ratelimit-Policy tests in package cloudflare_test.
var ParseRatePolicy = parseRatePolicy
