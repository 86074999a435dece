package controlplane

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// principal is who made a request.
type principal struct {
	Kind      string // api.Caller* or "system" (the process itself)
	AccountID string
	ID        string   // token id, source server id or replicator id
	Role      api.Role // users
	Scope     string   // install tokens
	// AllowReplace: an install token made to re-register what is registered already.
	AllowReplace bool
	System       bool // the account is the system account
}

// mayReplace reports whether the principal may re-register an existing machine id or
// replicator name, taking over its identity: an admin, or an install token an admin made
// for that (docs/security.md).
func (p principal) mayReplace() bool {
	return (p.Kind == api.CallerUser && p.Role == api.RoleAdmin) || (p.Kind == api.CallerInstall && p.AllowReplace)
}

// actor names the principal in the audit log.
func (p principal) actor() (kind, id string) {
	if p.Kind == api.CallerUser {
		return p.Kind, "token:" + p.ID
	}
	return p.Kind, p.ID
}

func unauthenticated(code, format string, args ...any) *api.Error {
	return api.Errorf(http.StatusUnauthorized, code, format, args...)
}

// authenticate finds who sent r: a bearer token (API or install), or else a client
// certificate the TLS handshake verified against the CA.
func (cp *ControlPlane) authenticate(c *call) (principal, error) {
	r := c.r
	if h := r.Header.Get("Authorization"); h != "" {
		raw, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return principal{}, unauthenticated(api.CodeUnauthenticated, "the Authorization header must be \"Bearer <token>\"")
		}
		return cp.authenticateToken(c, strings.TrimSpace(raw))
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return cp.authenticateCertificate(c)
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "the client certificate was not issued by this control plane's CA")
	}
	return principal{}, unauthenticated(api.CodeUnauthenticated,
		"send an API token as \"Authorization: Bearer <token>\" (lifeboat tokens create --kind api) or a client certificate")
}

func (cp *ControlPlane) authenticateToken(c *call, raw string) (principal, error) {
	tok, err := pki.ParseToken(raw)
	if err != nil {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "%s", err)
	}
	var row db.Token
	err = c.read(func(tx *db.Tx) error {
		row, err = tx.Token(tok.ID)
		return err
	})
	if errors.Is(err, db.ErrNotFound) || (err == nil && !pki.SecretMatches(tok.Secret, row.SecretHash)) {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "the token is not known to this control plane: create one with lifeboat tokens create")
	}
	if err != nil {
		return principal{}, err
	}
	if (row.Kind == api.TokenInstall) != tok.Install {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "the token is malformed: copy it whole from lifeboat tokens create")
	}
	if tok.Install && tok.Pin != cp.pin {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "the install token's CA pin does not match this control plane's certificate: create a new install token")
	}
	now := cp.cfg.Now()
	if row.RevokedAt != nil {
		return principal{}, unauthenticated(api.CodeTokenRevoked, "token %s was revoked on %s: create a new one with lifeboat tokens create",
			row.ID, row.RevokedAt.Format("2006-01-02 15:04 MST"))
	}
	if row.ExpiresAt != nil && !now.Before(*row.ExpiresAt) {
		return principal{}, unauthenticated(api.CodeTokenExpired, "token %s expired at %s: create a new one with lifeboat tokens create",
			row.ID, row.ExpiresAt.Format("2006-01-02 15:04:05 MST"))
	}
	if row.UsesLeft != nil && *row.UsesLeft <= 0 {
		return principal{}, unauthenticated(api.CodeTokenUsedUp, "install token %s has been used %d times, all it allowed: create a new one with lifeboat tokens create --kind install",
			row.ID, row.Uses)
	}
	p := principal{AccountID: row.AccountID, ID: row.ID, System: row.AccountID == cp.system}
	if row.Kind == api.TokenInstall {
		p.Kind, p.Scope, p.AllowReplace = api.CallerInstall, row.Scope, row.AllowReplace
	} else {
		p.Kind, p.Role = api.CallerUser, row.Role
	}
	return p, nil
}

func (cp *ControlPlane) authenticateCertificate(c *call) (principal, error) {
	chain := c.r.TLS.VerifiedChains[0]
	leaf := chain[0]
	id, err := pki.IdentityOf(leaf)
	if err != nil {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "the client certificate carries no Lifeboat identity: %s", err)
	}
	// Each kind of identity is valid only from its own CA.
	if id.Kind == pki.KindControlPlane || !chain[len(chain)-1].Equal(cp.ca.For(id.Kind).Certificate()) {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "the client certificate for %s was not issued by the CA of %ss", id, id.Kind)
	}
	serial := pki.SerialHex(leaf)
	var account, current, previous string
	err = c.read(func(tx *db.Tx) error {
		switch id.Kind {
		case pki.KindSourceServer:
			s, err := tx.SourceServer(id.ID)
			account, current, previous = s.AccountID, s.CertSerial, s.PrevCertSerial
			return err
		default:
			r, err := tx.Replicator(id.ID, cp.liveSince())
			account, current, previous = r.AccountID, r.CertSerial, r.PrevCertSerial
			return err
		}
	})
	if errors.Is(err, db.ErrNotFound) {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "%s %s is no longer registered: register it again (lifeboat %s)",
			id.Kind, id.ID, map[string]string{pki.KindSourceServer: "agent install", pki.KindReplicator: "replicator"}[id.Kind])
	}
	if err != nil {
		return principal{}, err
	}
	if account != id.Account {
		return principal{}, api.Forbidden("the certificate of %s belongs to account %s, but %s is in account %s", id, id.Account, id.ID, account)
	}
	if serial != current && (previous == "" || serial != previous) {
		return principal{}, unauthenticated(api.CodeUnauthenticated, "this certificate of %s was replaced by a newer registration or renewal: use the current one, or register again", id)
	}
	kind := api.CallerSourceServer
	if id.Kind == pki.KindReplicator {
		kind = api.CallerReplicator
	}
	return principal{Kind: kind, AccountID: account, ID: id.ID, System: account == cp.system}, nil
}

// access says who may call a route. It is the one place authorization is declared.
type access struct {
	public     bool     // no credentials needed
	role       api.Role // least role of users; "" refuses users
	system     bool     // users must belong to the system account
	install    string   // install-token scope allowed ("*": any); "" refuses install tokens
	agent      bool     // source-server certificates, on their own source server only
	replicator bool     // replicator certificates, on themselves or their assigned servers
	target     target   // what {id} names, for the agent and replicator checks
}

type target int

const (
	targetNone         target = iota
	targetSourceServer        // {id} is a source server
	targetReplicator          // {id} is a replicator
	targetSnapshot            // {id} is a recovery snapshot
)

// authorize applies a route's access to a principal.
func (cp *ControlPlane) authorize(c *call, a access) error {
	p := c.p
	switch p.Kind {
	case api.CallerUser:
		if a.role == "" {
			return api.Forbidden("this endpoint is for agents and replicators, not API tokens")
		}
		if p.Role.Level() < a.role.Level() {
			return api.Forbidden("this needs the %s role, and token %s has the %s role: use a token with that role (lifeboat tokens create --kind api --role %s)",
				a.role, p.ID, p.Role, a.role)
		}
		if a.system && !p.System {
			return api.Forbidden("only admins of the system account may do this")
		}
		return nil
	case api.CallerInstall:
		if a.install == "" || (a.install != "*" && a.install != p.Scope) {
			return api.Forbidden("an install token (scope %s) can only register a %s: use an API token for this", p.Scope, p.Scope)
		}
		return nil
	case api.CallerSourceServer:
		if !a.agent {
			return api.Forbidden("agents may not call this endpoint")
		}
		if a.target == targetSourceServer && c.pathID() != p.ID {
			return api.Forbidden("source server %s may act only on itself, not on %s", p.ID, c.pathID())
		}
		if a.target != targetSourceServer && a.target != targetNone {
			return api.Forbidden("agents may not call this endpoint")
		}
		return nil
	case api.CallerReplicator:
		if !a.replicator {
			return api.Forbidden("replicators may not call this endpoint")
		}
		return cp.authorizeReplicator(c, a.target)
	}
	return api.Forbidden("this caller may not call this endpoint")
}

// authorizeReplicator lets a replicator act on itself, and on the source servers (and
// their snapshots) assigned to it.
func (cp *ControlPlane) authorizeReplicator(c *call, t target) error {
	id := c.pathID()
	switch t {
	case targetNone:
		return nil
	case targetReplicator:
		if id != c.p.ID {
			return api.Forbidden("replicator %s may act only on itself, not on %s", c.p.ID, id)
		}
		return nil
	}
	var assigned, account string
	err := c.view(func(tx *db.Tx) error {
		serverID := id
		if t == targetSnapshot {
			s, err := tx.Snapshot(id)
			if err != nil {
				return err
			}
			serverID = s.SourceServerID
		}
		s, err := tx.SourceServer(serverID)
		assigned, account = s.ReplicatorID, s.AccountID
		return err
	})
	if errors.Is(err, db.ErrNotFound) {
		return api.NotFound("%s was not found", id)
	}
	if err != nil {
		return err
	}
	if account != c.p.AccountID {
		return api.NotFound("%s was not found", id)
	}
	if assigned != c.p.ID {
		return api.Forbidden("%s is not assigned to replicator %s", id, c.p.ID)
	}
	return nil
}

// describe says in words who may call, for the OpenAPI document.
func (a access) describe() string {
	if a.public {
		return "public"
	}
	var who []string
	if a.role != "" {
		s := "users with role " + string(a.role) + " or higher"
		if a.system {
			s += " in the system account"
		}
		who = append(who, s)
	}
	if a.install != "" {
		who = append(who, fmt.Sprintf("install tokens (scope %s)", a.install))
	}
	if a.agent {
		who = append(who, "the agent of the source server")
	}
	if a.replicator {
		switch a.target {
		case targetReplicator:
			who = append(who, "the replicator itself")
		case targetNone:
			who = append(who, "replicators")
		default:
			who = append(who, "the replicator the source server is assigned to")
		}
	}
	return strings.Join(who, "; ")
}
