package api

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// DefaultAgentConfig is where `lifeboat agent install` writes the agent's configuration.
const DefaultAgentConfig = "/etc/lifeboat/agent.yaml"

// AgentConfig is the agent's configuration file, written by `lifeboat agent install`
// (mode 0600: it holds the agent's private key) and read by `lifeboat agent run`.
type AgentConfig struct {
	Server         string   `yaml:"server"`         // control plane URL
	ServerPin      string   `yaml:"serverPin"`      // pin of the control plane's CA (from the install token)
	AccountID      string   `yaml:"accountId"`      //
	SourceServerID string   `yaml:"sourceServerId"` //
	MachineID      string   `yaml:"machineId"`      //
	Volumes        []string `yaml:"volumes,omitempty"`
	// PreFreeze and PostThaw are commands run around every consistency point's freeze
	// (application-consistent points: flush a database, then let it go on).
	PreFreeze      string `yaml:"preFreeze,omitempty"`
	PostThaw       string `yaml:"postThaw,omitempty"`
	Certificate    string `yaml:"certificate"`    // PEM client certificate
	Key            string `yaml:"key"`            // PEM private key
	CACertificates string `yaml:"caCertificates"` // PEM CA that signs replicators' certificates
	// MetricsListen, when set, is where `lifeboat agent run` serves its Prometheus
	// metrics (host:port, plain HTTP; --metrics-listen overrides it).
	MetricsListen string `yaml:"metricsListen,omitempty"`
}

// ReadAgentConfigFile reads an agent configuration file that may have no identity yet
// (a recovered server's, before reversed replication registers it).
func ReadAgentConfigFile(path string) (*AgentConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent configuration: %w", err)
	}
	var c AgentConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("agent configuration %s is not valid YAML: %w", path, err)
	}
	return &c, nil
}

// LoadAgentConfig reads an agent configuration file.
func LoadAgentConfig(path string) (*AgentConfig, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agent configuration %s does not exist: register this machine with lifeboat agent install", path)
	}
	if err != nil {
		return nil, fmt.Errorf("read agent configuration: %w", err)
	}
	var c AgentConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("agent configuration %s is not valid YAML: %w", path, err)
	}
	if c.Server == "" || !ValidID(PrefixSourceServer, c.SourceServerID) || c.Certificate == "" || c.Key == "" || c.ServerPin == "" {
		return nil, fmt.Errorf("agent configuration %s is incomplete: register again with lifeboat agent install --replace", path)
	}
	return &c, nil
}

// Save writes the configuration atomically with mode 0600, creating its directory.
func (c *AgentConfig) Save(path string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create the directory of %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, data, 0o600)
}

// TLSCertificate returns the agent's client certificate and key.
func (c *AgentConfig) TLSCertificate() (tls.Certificate, error) {
	cert, err := tls.X509KeyPair([]byte(c.Certificate), []byte(c.Key))
	if err != nil {
		return cert, fmt.Errorf("the agent's certificate and key do not load: %w (register again with lifeboat agent install --replace)", err)
	}
	return cert, nil
}

// Client returns an API client that authenticates as the agent and trusts the control
// plane by its pin.
func (c *AgentConfig) Client() (*Client, error) {
	cert, err := c.TLSCertificate()
	if err != nil {
		return nil, err
	}
	return NewClient(ClientConfig{Server: c.Server, Pin: c.ServerPin, Certificate: &cert, UserAgent: "lifeboat-agent"})
}
