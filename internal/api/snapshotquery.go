package api

import (
	"context"
	"net/url"
	"strconv"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// SnapshotQuery narrows a listing of a server's PITs (GET
// /api/v1/source-servers/{id}/recovery-snapshots): taken at or after After (inclusive),
// before Before (exclusive), of Level; a zero time or nil level does not narrow. Limit is
// the page size (0: the control plane's default).
type SnapshotQuery struct {
	After, Before time.Time
	Level         *consistency.Level
	Limit         int
}

// values is the query as URL parameters, with the page token.
func (q SnapshotQuery) values(pageToken string) url.Values {
	v := url.Values{}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if !q.After.IsZero() {
		v.Set("after", q.After.UTC().Format(time.RFC3339Nano))
	}
	if !q.Before.IsZero() {
		v.Set("before", q.Before.UTC().Format(time.RFC3339Nano))
	}
	if q.Level != nil {
		v.Set("level", q.Level.String())
	}
	if pageToken != "" {
		v.Set("page_token", pageToken)
	}
	return v
}

// FindRecoverySnapshots returns one page of a server's PITs that match q, newest first;
// the next page is asked with the same q and the page's NextPageToken.
func (c *Client) FindRecoverySnapshots(ctx context.Context, serverID string, q SnapshotQuery, pageToken string) (RecoverySnapshotList, error) {
	var out RecoverySnapshotList
	return out, c.do(ctx, "GET", "/api/v1/source-servers/"+esc(serverID)+"/recovery-snapshots", q.values(pageToken), nil, &out)
}

// FindRecoverySnapshotPages pages through a server's PITs that match q, newest first.
func (c *Client) FindRecoverySnapshotPages(serverID string, q SnapshotQuery) PageFunc[RecoverySnapshot] {
	return func(ctx context.Context, token string) ([]RecoverySnapshot, string, error) {
		page, err := c.FindRecoverySnapshots(ctx, serverID, q, token)
		return page.Items, page.NextPageToken, err
	}
}
