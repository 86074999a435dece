package controlplane

import "github.com/lifeboat-dr/lifeboat/internal/limit"

// Hold takes n places of one of the API's counters — "ip" (unauthenticated requests
// by client address), "account" (requests by account) or "caller" (long-polls and
// streams by caller kind:id) — for key, as n requests in flight would. The function it
// returns gives them back.
func (cp *ControlPlane) Hold(counter, key string, n int) (release func()) {
	c := map[string]*limit.Counter{"ip": cp.guard.unauth, "account": cp.guard.account, "caller": cp.guard.caller}[counter]
	held := 0
	for held < n && c.Acquire(key) {
		held++
	}
	return func() {
		for range held {
			c.Release(key)
		}
	}
}
