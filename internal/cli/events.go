package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newEventsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "events", Short: "Follow the event stream: one line per change, until interrupted", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runEvents(cmd.Context(), g) },
	}
}

// runEvents prints the event stream until ctx ends, reconnecting after the last event
// seen when the control plane ends the stream.
func runEvents(ctx context.Context, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	var last int64
	for {
		err := c.Events(ctx, last, func(ev api.Event) error {
			if ev.Seq > 0 {
				last = ev.Seq
			}
			if g.output == "json" {
				return g.show(ev, nil)
			}
			fmt.Fprintf(g.stdout, "%s  %-40s %s:%s\n", ev.Time.Local().Format("15:04:05.000"), ev.Type, ev.TargetKind, ev.TargetID)
			return nil
		})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		select { // the server ended the stream: reconnect
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}
