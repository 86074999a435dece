package api

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// fakePages is a listing: for each token, its page and the next token.
type fakePages struct {
	pages map[string]fakePage
	asked []string // the tokens fetched, in order
}

type fakePage struct {
	items []string
	next  string
}

func (f *fakePages) fetch(_ context.Context, token string) ([]string, string, error) {
	f.asked = append(f.asked, token)
	if len(f.asked) > 10 {
		return nil, "", errors.New("fetched more than 10 pages")
	}
	p, ok := f.pages[token]
	if !ok {
		return nil, "", errors.New("no such page " + token)
	}
	return p.items, p.next, nil
}

func collect(got *[]string) func(string) (bool, error) {
	return func(s string) (bool, error) { *got = append(*got, s); return false, nil }
}

func TestAllPagesReadsToTheLastPage(t *testing.T) {
	f := &fakePages{pages: map[string]fakePage{"": {[]string{"a", "b"}, "t1"}, "t1": {[]string{"c"}, "t2"}, "t2": {[]string{"d"}, ""}}}
	all, err := AllPages(context.Background(), f.fetch)
	if err != nil || !slices.Equal(all, []string{"a", "b", "c", "d"}) || !slices.Equal(f.asked, []string{"", "t1", "t2"}) {
		t.Fatalf("AllPages = %v, %v after fetching %q", all, err, f.asked)
	}
	empty := &fakePages{pages: map[string]fakePage{"": {}}}
	if all, err := AllPages(context.Background(), empty.fetch); err != nil || all == nil || len(all) != 0 {
		t.Fatalf("AllPages of an empty listing = %#v, %v; want an empty slice", all, err)
	}
}

func TestEachPageStops(t *testing.T) {
	f := &fakePages{pages: map[string]fakePage{"": {[]string{"a", "b"}, "t1"}, "t1": {[]string{"c", "d"}, "t2"}, "t2": {[]string{"e"}, ""}}}
	var got []string
	_, err := EachPage(context.Background(), "", f.fetch, func(s string) (bool, error) {
		got = append(got, s)
		return s == "c", nil
	})
	if err != nil || !slices.Equal(got, []string{"a", "b", "c"}) || len(f.asked) != 2 {
		t.Fatalf("stopped at c: saw %v, %v after fetching %q", got, err, f.asked)
	}
	boom := errors.New("boom")
	_, err = EachPage(context.Background(), "", f.fetch, func(string) (bool, error) { return false, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("fn's error: got %v", err)
	}
	if _, err := EachPage(context.Background(), "nope", f.fetch, collect(&got)); err == nil || !strings.Contains(err.Error(), "no such page") {
		t.Fatalf("fetch's error: got %v", err)
	}
}

// A job log's token is a cursor: the page after the last entry is empty and names the
// same token, and reading on from the token returned gets only what was logged since.
func TestEachPageFollowsACursor(t *testing.T) {
	f := &fakePages{pages: map[string]fakePage{"": {[]string{"e1", "e2"}, "e2"}, "e2": {nil, "e2"}}}
	var got []string
	token, err := EachPage(context.Background(), "", f.fetch, collect(&got))
	if err != nil || token != "e2" || !slices.Equal(got, []string{"e1", "e2"}) {
		t.Fatalf("first read: %v, token %q, %v", got, token, err)
	}
	f.pages["e2"] = fakePage{[]string{"e3"}, "e3"}
	f.pages["e3"] = fakePage{nil, "e3"}
	got = nil
	token, err = EachPage(context.Background(), token, f.fetch, collect(&got))
	if err != nil || token != "e3" || !slices.Equal(got, []string{"e3"}) {
		t.Fatalf("read on: %v, token %q, %v", got, token, err)
	}
}

// A control plane that names a page as its own successor would keep the reader looping.
func TestEachPageRefusesAPageThatNamesItself(t *testing.T) {
	f := &fakePages{pages: map[string]fakePage{"": {[]string{"a"}, "t1"}, "t1": {[]string{"b"}, "t1"}}}
	var got []string
	if _, err := EachPage(context.Background(), "", f.fetch, collect(&got)); err == nil || !strings.Contains(err.Error(), "never end") {
		t.Fatalf("looping listing: %v after fetching %q", err, f.asked)
	}
}
