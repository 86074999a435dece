package conversion

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// MetaData is a NoCloud seed's meta-data.
type MetaData struct {
	// InstanceID identifies the instance to cloud-init; a new id makes cloud-init run
	// its first-boot modules again (hostname, network, user-data). Required.
	InstanceID string
	// LocalHostname is the hostname cloud-init sets (optional).
	LocalHostname string
}

// yamlString quotes a string for YAML: a JSON string is a valid YAML double-quoted
// scalar, with the same escapes.
func yamlString(s string) string {
	b, _ := json.Marshal(s) // a string always encodes
	return string(b)
}

// metaDataYAML is the meta-data file.
func (m MetaData) yaml() string {
	s := "instance-id: " + yamlString(m.InstanceID) + "\n"
	if m.LocalHostname != "" {
		s += "local-hostname: " + yamlString(m.LocalHostname) + "\n"
	}
	return s
}

// SeedFileName is the name NoCloudSeed gives the seed image in its directory.
const SeedFileName = "cidata.iso"

// NoCloudSeed writes a cloud-init NoCloud seed disk into dir and returns its path: an
// ISO 9660 image (with Rock Ridge and Joliet names) whose volume label is "cidata",
// holding meta-data, user-data ("#cloud-config" when empty) and, if given,
// network-config (see NetworkConfig). Attach it to the VM read-only (the qemu
// provider's ExtraDrives); cloud-init finds it by its label. An existing seed in dir is
// replaced whole. It needs xorriso (or genisoimage).
func NoCloudSeed(ctx context.Context, dir string, meta MetaData, userData, networkConfig string) (string, error) {
	if strings.TrimSpace(meta.InstanceID) == "" {
		return "", errors.New("NoCloud seed: meta-data needs an instance id")
	}
	if meta.LocalHostname != "" {
		if err := checkHostname(meta.LocalHostname); err != nil {
			return "", fmt.Errorf("NoCloud seed: %w", err)
		}
	}
	if userData == "" {
		userData = "#cloud-config\n"
	}
	tool, args, err := isoTool()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("NoCloud seed: %w", err)
	}
	staging, err := os.MkdirTemp(dir, ".cidata-")
	if err != nil {
		return "", fmt.Errorf("NoCloud seed: %w", err)
	}
	defer os.RemoveAll(staging)
	files := []struct{ name, content string }{
		{"meta-data", meta.yaml()},
		{"user-data", userData},
	}
	if networkConfig != "" {
		files = append(files, struct{ name, content string }{"network-config", networkConfig})
	}
	tmp := filepath.Join(staging, SeedFileName)
	args = append(args, "-output", tmp, "-volid", "cidata", "-joliet", "-rock")
	for _, f := range files {
		p := filepath.Join(staging, f.name)
		if err := os.WriteFile(p, []byte(f.content), 0o644); err != nil {
			return "", fmt.Errorf("NoCloud seed: %w", err)
		}
		args = append(args, p)
	}
	cmd := exec.CommandContext(ctx, tool, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("NoCloud seed: %s failed: %w: %s", tool, err, strings.TrimSpace(out.String()))
	}
	seed := filepath.Join(dir, SeedFileName)
	err = atomicfile.Write(ctx, seed, 0o644, func(f *os.File) error {
		iso, err := os.Open(tmp)
		if err != nil {
			return err
		}
		defer iso.Close()
		_, err = io.Copy(f, iso)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("NoCloud seed: %w", err)
	}
	return seed, nil
}

// isoTool finds a program that writes ISO 9660 images with mkisofs's options.
func isoTool() (string, []string, error) {
	if p, err := exec.LookPath("xorriso"); err == nil {
		return p, []string{"-as", "mkisofs", "-quiet"}, nil
	}
	if p, err := exec.LookPath("genisoimage"); err == nil {
		return p, []string{"-quiet"}, nil
	}
	return "", nil, errors.New("writing a NoCloud seed image needs xorriso, which is not installed: apt-get install xorriso")
}
