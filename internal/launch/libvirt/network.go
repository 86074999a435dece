package libvirt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// BridgeName is the host bridge of the network named name: "lb" and 10 hex digits of
// its hash (Linux allows 15 characters), so a network's bridge is found again from its
// name and two hosts' networks never pick the same virbrN.
func BridgeName(name string) string {
	h := sha256.Sum256([]byte(name))
	return "lb" + hex.EncodeToString(h[:5])
}

func (c *Client) lookupNetwork(ctx context.Context, name string) (golibvirt.Network, error) {
	var n golibvirt.Network
	if err := checkName("network", name); err != nil {
		return n, err
	}
	err := c.do(ctx, "look up network "+name, func() (err error) {
		n, err = c.lv.NetworkLookupByName(name)
		return notFound(err, "network", name)
	})
	return n, err
}

// NetworkActive reports whether a libvirt network runs; an error wrapping ErrNotFound
// when there is none.
func (c *Client) NetworkActive(ctx context.Context, name string) (bool, error) {
	n, err := c.lookupNetwork(ctx, name)
	if err != nil {
		return false, err
	}
	var active int32
	err = c.do(ctx, "state of network "+name, func() (err error) {
		active, err = c.lv.NetworkIsActive(n)
		return err
	})
	return active == 1, err
}

// Networks lists the names of all libvirt networks.
func (c *Client) Networks(ctx context.Context) ([]string, error) {
	var names []string
	err := c.do(ctx, "list networks", func() error {
		ns, _, err := c.lv.ConnectListAllNetworks(1, 0)
		for _, n := range ns {
			names = append(names, n.Name)
		}
		return err
	})
	return names, err
}

// CreateIsolatedNetwork defines and starts a network with no forward: its domains
// reach each other and nothing else (no address on the host's bridge, no DHCP). An
// existing network of that name is started if needed and kept: a retried launch finds
// the one it made.
func (c *Client) CreateIsolatedNetwork(ctx context.Context, name string) error {
	if err := checkName("network", name); err != nil {
		return err
	}
	n, err := c.lookupNetwork(ctx, name)
	if errors.Is(err, ErrNotFound) {
		x, merr := (&libvirtxml.Network{Name: name,
			Bridge: &libvirtxml.NetworkBridge{Name: BridgeName(name), STP: "on", Delay: "0"}}).Marshal()
		if merr != nil {
			return merr
		}
		err = c.do(ctx, "define network "+name, func() (err error) {
			n, err = c.lv.NetworkDefineXML(x)
			return err
		})
	}
	if err != nil {
		return err
	}
	err = c.do(ctx, "start network "+name, func() error {
		active, err := c.lv.NetworkIsActive(n)
		if err != nil || active == 1 {
			return err
		}
		return c.lv.NetworkCreate(n)
	})
	if err == nil {
		c.log.Info("made an isolated network", "network", name, "bridge", BridgeName(name))
	}
	return err
}

// RemoveNetwork stops and undefines a network; a missing one is no error.
func (c *Client) RemoveNetwork(ctx context.Context, name string) error {
	n, err := c.lookupNetwork(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	err = c.do(ctx, "remove network "+name, func() error {
		if err := c.lv.NetworkDestroy(n); err != nil && errCode(err) != golibvirt.ErrOperationInvalid {
			return notFound(err, "network", name)
		}
		return notFound(c.lv.NetworkUndefine(n), "network", name)
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err == nil {
		c.log.Info("removed a network", "network", name)
	}
	return err
}

// CaptureConsole copies a running domain's serial console into w through libvirt's
// console stream, over a connection of its own, until the console ends (the domain
// stops: nil) or ctx ends (ctx's error). It takes the console from any other client.
func (c *Client) CaptureConsole(ctx context.Context, domain string, w io.Writer) error {
	cc, err := Dial(ctx, c.cfg)
	if err != nil {
		return err
	}
	defer cc.Close()
	d, err := cc.lookupDomain(ctx, domain)
	if err != nil {
		return err
	}
	err = cc.run(ctx, "console of domain "+domain, func() error {
		return cc.lv.DomainOpenConsole(d, golibvirt.OptString{}, w, uint32(golibvirt.DomainConsoleForce))
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("capture the console: %w", err)
	}
	return nil
}
