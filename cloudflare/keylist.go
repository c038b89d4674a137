package cloudflare

// NewKeyList is a key list the API vouched for (Listed), holding ids, as
// ListSigningKeys would return it with resp: for tests of what decides on a
// list.
func NewKeyList(resp *Response, ids ...string) *KeyList {
	l := &KeyList{Response: resp, Listed: true, ids: make(map[string]struct{}, len(ids))}
	for _, id := range ids {
		l.ids[foldID(id)] = struct{}{}
	}
	return l
}

// Unanswered is the key list of a call that was not made (Listed false,
// Why "no answer", an empty Response), for callers that decide not to call.
func Unanswered() *KeyList {
	return &KeyList{Response: &Response{}, why: "no answer"}
}
