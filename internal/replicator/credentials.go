package replicator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// Credentials are a registered replicator's identity: written once by Register (mode
// 0600: they hold its private key) and read at every start.
type Credentials struct {
	Server         string `yaml:"server"`    // control plane URL
	ServerPin      string `yaml:"serverPin"` // pin of the control plane's CA, from the install token
	ID             string `yaml:"id"`
	AccountID      string `yaml:"accountId"`
	Name           string `yaml:"name"`
	Site           string `yaml:"site"`
	Address        string `yaml:"address"` // host:port agents connect to
	Certificate    string `yaml:"certificate"`
	Key            string `yaml:"key"`
	CACertificates string `yaml:"caCertificates"`
}

// LoadCredentials reads a credentials file; a missing file is fs.ErrNotExist.
func LoadCredentials(path string) (*Credentials, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Credentials
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("replicator credentials %s are not valid YAML: %w", path, err)
	}
	if c.Server == "" || !api.ValidID(api.PrefixReplicator, c.ID) || c.Certificate == "" || c.Key == "" || c.ServerPin == "" {
		return nil, fmt.Errorf("replicator credentials %s are incomplete: remove the file and register again with --token-file", path)
	}
	return &c, nil
}

// Save writes the credentials atomically with mode 0600.
func (c *Credentials) Save(path string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, data, 0o600)
}

// TLSCertificate is the replicator's certificate: its listener's server certificate and
// its client certificate for the control plane.
func (c *Credentials) TLSCertificate() (tls.Certificate, error) {
	cert, err := tls.X509KeyPair([]byte(c.Certificate), []byte(c.Key))
	if err != nil {
		return cert, fmt.Errorf("the replicator's certificate and key do not load: %w", err)
	}
	return cert, nil
}

// CAPool is the CA that signs agents' certificates (and no other).
func (c *Credentials) CAPool() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(c.CACertificates)) {
		return nil, errors.New("the replicator's credentials hold no CA certificate")
	}
	return pool, nil
}

// Client returns an API client authenticated as the replicator.
func (c *Credentials) Client() (*api.Client, error) {
	cert, err := c.TLSCertificate()
	if err != nil {
		return nil, err
	}
	return api.NewClient(api.ClientConfig{Server: c.Server, Pin: c.ServerPin, Certificate: &cert, UserAgent: "lifeboat-replicator"})
}

// RegisterOptions describe a replicator to register.
type RegisterOptions struct {
	Server  string // control plane URL
	Token   string // a replicator install token (lifeboat tokens create --kind install --scope replicator)
	Name    string
	Site    string
	Address string // host:port agents will connect to
	// Replace re-registers a replicator of the same name in place (its id and servers
	// stay; its old certificate stops working everywhere). It needs an install token
	// created with --allow-replace, or an admin API token.
	Replace bool
}

// Register registers a new replicator with an install token and returns its
// credentials (not yet saved).
func Register(ctx context.Context, o RegisterOptions) (*Credentials, error) {
	tok, err := pki.ParseToken(o.Token)
	if err != nil || !tok.Install {
		return nil, errors.New("the token must be a replicator install token (lbi_…): create one with lifeboat tokens create --kind install --scope replicator")
	}
	// The control plane is trusted through the token's pin only: of its own CA, and
	// its certificate must carry its identity (pki.VerifyPinned).
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.NewCSR(key, o.Name)
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(api.ClientConfig{Server: o.Server, Token: o.Token, Pin: tok.Pin, UserAgent: "lifeboat-replicator"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	resp, err := c.RegisterReplicator(ctx, api.RegisterReplicatorRequest{CSR: string(csr), Name: o.Name, Site: o.Site,
		Address: o.Address, Version: "lifeboat", Replace: o.Replace})
	if err != nil {
		return nil, fmt.Errorf("register replicator %s: %w", o.Name, err)
	}
	return &Credentials{Server: o.Server, ServerPin: tok.Pin, ID: resp.Replicator.ID, AccountID: resp.Replicator.AccountID,
		Name: o.Name, Site: o.Site, Address: o.Address, Certificate: resp.Certificate, Key: string(keyPEM),
		CACertificates: resp.CACertificates}, nil
}

// LoadOrRegister loads the credentials at path, or registers with o and saves them there.
func LoadOrRegister(ctx context.Context, path string, o RegisterOptions) (*Credentials, error) {
	c, err := LoadCredentials(path)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if o.Token == "" {
		return nil, fmt.Errorf("this replicator is not registered (%s does not exist): give a replicator install token with --token-file FILE or env LIFEBOAT_TOKEN (lifeboat tokens create --kind install --scope replicator)", path)
	}
	c, err = Register(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := c.Save(path); err != nil {
		return nil, fmt.Errorf("registered as %s but could not save the credentials: %w", c.ID, err)
	}
	return c, nil
}
