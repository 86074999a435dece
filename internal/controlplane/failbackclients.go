package controlplane

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// Failback clients (docs/failback-client.md): machines booted from the rescue media.
// One registers with an install token of scope failback and gets a secret for its later
// calls (FailbackClientHeader); a FAILBACK job into it (recovery.Runner) prepares the
// converted PIT as an image on this host and assigns it; the client sends the hashes of
// its disk's blocks and receives only the blocks that differ.

func (c *call) registerFailbackClient(req *api.RegisterFailbackClientRequest) (api.RegisterFailbackClientResponse, error) {
	var out api.RegisterFailbackClientResponse
	if err := req.Validate(); err != nil {
		return out, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return out, err
	}
	secret := base64.RawURLEncoding.EncodeToString(b)
	now := c.cp.cfg.Now()
	fc := db.FailbackClient{FailbackClient: api.FailbackClient{ID: api.NewID(api.PrefixFailbackClient), Hostname: req.Hostname,
		Disks: req.Disks, CreatedAt: now, LastSeenAt: now}, AccountID: c.p.AccountID, SecretHash: pki.HashSecret(secret)}
	err := c.update(func(tx *db.Tx) error {
		if err := c.consumeInstallToken(tx); err != nil {
			return err
		}
		if err := tx.CreateFailbackClient(fc); err != nil {
			return err
		}
		return c.record(tx, fc.AccountID, "failback-client.register", "failback-client", fc.ID,
			map[string]any{"hostname": fc.Hostname, "disks": len(fc.Disks)}, nil)
	})
	return api.RegisterFailbackClientResponse{Client: fc.FailbackClient, Secret: secret}, err
}

// failbackClientCaller authenticates a failback client's call by its header.
func (c *call) failbackClientCaller(tx *db.Tx) (db.FailbackClient, error) {
	id, secret, ok := strings.Cut(c.r.Header.Get(api.FailbackClientHeader), " ")
	if !ok || !api.ValidID(api.PrefixFailbackClient, id) || len(secret) > 128 {
		return db.FailbackClient{}, unauthenticated(api.CodeUnauthenticated, "a failback client's call needs its %s header: ID SECRET", api.FailbackClientHeader)
	}
	fc, err := tx.FailbackClient(id)
	if errors.Is(err, db.ErrNotFound) || (err == nil && !pki.SecretMatches(secret, fc.SecretHash)) {
		return fc, unauthenticated(api.CodeUnauthenticated, "failback client %s is not registered with that secret: register again (boot the rescue media with a new failback token)", id)
	}
	if err == nil {
		c.p = principal{Kind: "failback-client", AccountID: fc.AccountID, ID: fc.ID}
	}
	return fc, err
}

// failbackClientSelf is a failback client asking what to do (its assignment, if any).
func (c *call) failbackClientSelf() (api.FailbackClient, error) {
	var fc db.FailbackClient
	err := c.update(func(tx *db.Tx) (err error) {
		if fc, err = c.failbackClientCaller(tx); err != nil {
			return err
		}
		return tx.TouchFailbackClient(fc.ID, c.cp.cfg.Now())
	})
	return fc.FailbackClient, err
}

// failbackClientProgress records a failback client's report of its write.
func (c *call) failbackClientProgress(req *api.FailbackProgress) (noBody, error) {
	if err := req.Validate(); err != nil {
		return noBody{}, err
	}
	return noBody{}, c.update(func(tx *db.Tx) error {
		fc, err := c.failbackClientCaller(tx)
		if err != nil {
			return err
		}
		if fc.Assignment == nil || fc.Assignment.JobID != req.JobID {
			return api.Conflict("failback client %s has no assignment of job %s", fc.ID, req.JobID)
		}
		if err := tx.SetFailbackProgress(fc.ID, req, c.cp.cfg.Now()); err != nil {
			return err
		}
		c.emit(fc.AccountID, "failback-client.progress", "failback-client", fc.ID, req)
		return nil
	})
}

// failbackClientDiff answers a failback client's block hashes with the blocks of its
// assignment's image that differ (api.DiffContentType: only those are written).
func (c *call) failbackClientDiff(req *api.FailbackDiffRequest, w http.ResponseWriter) error {
	var fc db.FailbackClient
	if err := c.view(func(tx *db.Tx) (err error) { fc, err = c.failbackClientCaller(tx); return err }); err != nil {
		return err
	}
	a := fc.Assignment
	if a == nil || a.JobID != req.JobID {
		return api.Conflict("failback client %s has no assignment of job %s", fc.ID, req.JobID)
	}
	bs := int64(a.BlockSize)
	blocks := uint64((a.SizeBytes + bs - 1) / bs)
	if req.Start >= blocks || uint64(len(req.Hashes)) > blocks-req.Start {
		return api.Invalid("blocks %d to %d are past the image's %d blocks", req.Start, req.Start+uint64(len(req.Hashes)), blocks)
	}
	img, err := os.Open(recovery.FailbackImage(c.cp.rec.cfg.Dir, a.RecoveryInstanceID))
	if err != nil {
		return fmt.Errorf("the failback image of job %s: %w", a.JobID, err)
	}
	defer img.Close()
	w.Header().Set("Content-Type", api.DiffContentType)
	bw := bufio.NewWriterSize(w, exportBufferBytes)
	x, err := api.NewExtentWriter(bw, api.ExtentHeader{Size: a.SizeBytes, BlockSize: a.BlockSize})
	if err != nil {
		return err
	}
	buf := make([]byte, bs)
	for i, h := range req.Hashes {
		b := req.Start + uint64(i)
		n := min(bs, a.SizeBytes-int64(b)*bs)
		if _, err := img.ReadAt(buf[:n], int64(b)*bs); err != nil && err != io.EOF {
			return err
		}
		if wire.Hash(buf[:n]) == h {
			continue
		}
		c.extendWrite(w)
		if err := x.Extent(int64(b)*bs, buf[:n]); err != nil {
			return err
		}
	}
	if err := x.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func (c *call) listFailbackClients() (api.FailbackClientList, error) {
	var rows []db.FailbackClient
	err := c.view(func(tx *db.Tx) (err error) { rows, err = tx.FailbackClients(c.p.AccountID); return err })
	out := api.FailbackClientList{Items: []api.FailbackClient{}}
	for _, r := range rows {
		out.Items = append(out.Items, r.FailbackClient)
	}
	return out, err
}
