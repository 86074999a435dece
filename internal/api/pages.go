package api

import (
	"context"
	"fmt"
)

// PageFunc fetches the page of a listing that token names ("" for the first): its items
// and the token of the next page, "" after the last. A job log's token is a cursor
// instead: it names the last entry read, and the page after it is empty until more is
// logged.
type PageFunc[T any] func(ctx context.Context, token string) (items []T, next string, err error)

// EachPage calls fn with each item of the pages fetch returns, from the page token names,
// until a page is the last or empty, or fn returns stop or an error. It returns the token
// to go on from, so a later EachPage over a job log reads only what was logged since.
func EachPage[T any](ctx context.Context, token string, fetch PageFunc[T], fn func(T) (stop bool, err error)) (string, error) {
	for {
		items, next, err := fetch(ctx, token)
		if err != nil {
			return token, err
		}
		if len(items) > 0 && next != "" && next == token {
			return token, fmt.Errorf("the control plane gave page token %q for the page after itself: the listing would never end", token)
		}
		token = next
		for _, it := range items {
			if stop, err := fn(it); stop || err != nil {
				return token, err
			}
		}
		if len(items) == 0 || next == "" {
			return token, nil
		}
	}
}

// AllPages returns the items of every page of a listing (empty, never nil, when there
// are none).
func AllPages[T any](ctx context.Context, fetch PageFunc[T]) ([]T, error) {
	all := []T{}
	_, err := EachPage(ctx, "", fetch, func(it T) (bool, error) {
		all = append(all, it)
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return all, nil
}
