package testutil

import (
	"crypto/sha256"
	"os"
	"testing"
)

// FileSHA256 returns the SHA-256 of a file's content.
func FileSHA256(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
