package replicator

import (
	"context"
	"log/slog"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// commit is one flush of the heads a run of frames touched, acknowledged up to seq
// once durable; or, with barrier set, a point that is reached when every flush before
// it is durable.
type commit struct {
	flushes []*store.Flusher
	seq     uint64
	barrier chan struct{} // closed when everything before is durable
}

// committer completes flushes in order, in its own goroutine, while the writer goes
// on writing the next blocks: the store's fsyncs overlap with hashing and sealing. The
// agent hears an Ack once a flush is durable, and none after a flush failed
// (docs/wire.md §6.5).
type committer struct {
	commits chan commit
	failed  chan *wire.Error // the failure that ended the committer
	done    chan struct{}
}

// startCommitter starts a committer that sends its Acks to out; close ends it.
func startCommitter(ctx context.Context, out chan<- wire.Msg, log *slog.Logger) *committer {
	c := &committer{commits: make(chan commit, 2), failed: make(chan *wire.Error, 1), done: make(chan struct{})}
	go c.run(ctx, out, log)
	return c
}

func (c *committer) run(ctx context.Context, out chan<- wire.Msg, log *slog.Logger) {
	defer close(c.done)
	for cm := range c.commits {
		if cm.barrier != nil {
			close(cm.barrier)
			continue
		}
		for _, f := range cm.flushes {
			if err := f.Wait(ctx); err != nil {
				log.Warn("flushing to the staging store failed", "err", err)
				c.failed <- storeError(err)
				for range c.commits { // drain: nothing after a failed flush is acknowledged
				}
				return
			}
		}
		out <- &wire.Ack{Seq: cm.seq}
	}
}

// send queues a commit, or returns the failure that ended the committer.
func (c *committer) send(cm commit) *wire.Error {
	select {
	case c.commits <- cm:
		return nil
	case e := <-c.failed:
		return e
	}
}

// durable waits until every flush sent so far is durable.
func (c *committer) durable() *wire.Error {
	b := make(chan struct{})
	if e := c.send(commit{barrier: b}); e != nil {
		return e
	}
	select {
	case <-b:
		return nil
	case e := <-c.failed:
		return e
	}
}

// failure returns the failure that ended the committer, if it has ended so.
func (c *committer) failure() *wire.Error {
	select {
	case e := <-c.failed:
		return e
	default:
		return nil
	}
}

// close ends the committer once it has done what was sent (or failed).
func (c *committer) close() {
	close(c.commits)
	<-c.done
}
