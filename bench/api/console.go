package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
)

// consoleCases times the web console's source servers page, signed in as a viewer: the
// console asks the API for one page of the filtered list (in-process) and renders it.
func consoleCases(ctx context.Context, cp *controlplane.ControlPlane, hc *http.Client, c *api.Client, kind string, runs int) error {
	tok, err := cp.CreateToken(ctx, cp.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
	if err != nil {
		return err
	}
	browser, err := signIn(hc, cp.URL(), tok.Secret)
	if err != nil {
		return err
	}
	// The page token of the 101st page of 50: the list past its first 5,000 servers.
	deep, err := c.ListSourceServers(ctx, api.SourceServerFilter{Limit: 5000})
	if err != nil {
		return err
	}
	cases := []struct {
		name, query string
		rows        int
	}{
		{"console page, first 50", "", 50},
		{"console page, 200 per page", "limit=200", 200},
		{"console page 101 of 50 (after 5,000 servers)", "page=" + url.QueryEscape(deep.NextPageToken), 50},
		{"console page, hostname search (1 match)", "q=web-04242", 1},
		{"console page, state PAUSED (100 of them)", "state=PAUSED&limit=200", 100},
		{"console page, tag tier=db and state", "tag=tier%3Ddb&state=CONTINUOUS", 50},
	}
	for _, cs := range cases {
		path := "/console/servers?" + cs.query
		err := timeCase(kind, cs.name, runs, cs.rows, func() (int, int, int, error) {
			return consolePage(ctx, browser, cp.URL()+path)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

var serverRow = regexp.MustCompile(`<th scope="row"><a href="/console/servers/s-`)

// consolePage GETs a console page with the session and counts its server rows.
func consolePage(ctx context.Context, hc *http.Client, u string) (count, calls, bytes int, err error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, 0, 0, fmt.Errorf("GET %s: status %d: %v %.300s", u, resp.StatusCode, err, body)
	}
	return len(serverRow.FindAllIndex(body, -1)), 1, len(body), nil
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// signIn signs in to the console with token, as a browser does, and returns a client
// that holds the session cookie.
func signIn(base *http.Client, server, token string) (*http.Client, error) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: base.Transport, Jar: jar}
	resp, err := hc.Get(server + "/console/sign-in")
	if err != nil {
		return nil, err
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := csrfField.FindSubmatch(page)
	if m == nil {
		return nil, fmt.Errorf("the console's sign-in page has no CSRF token (status %d)", resp.StatusCode)
	}
	resp, err = hc.PostForm(server+"/console/sign-in", url.Values{"csrf": {string(m[1])}, "token": {token}})
	if err != nil {
		return nil, err
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Sign out") {
		return nil, fmt.Errorf("signing in to the console: status %d %.300s", resp.StatusCode, page)
	}
	return hc, nil
}
