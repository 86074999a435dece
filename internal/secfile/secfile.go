// Package secfile keeps the files that hold secrets or state (keys, tokens, credentials,
// the database) private to their owner: created 0600 in directories of ours made 0700,
// and tightened when an older version, a copy or a restore left them readable by others.
package secfile

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
)

// Tighten removes the group and other permissions of each file or directory in paths (a
// symbolic link is followed), keeping the owner's, and logs a warning for each that had
// any: the next start finds it private and says nothing. Missing paths are skipped.
func Tighten(log *slog.Logger, paths ...string) error {
	for _, path := range paths {
		fi, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("check the permissions of %s: %w", path, err)
		}
		old := fi.Mode().Perm()
		if old&0o077 == 0 {
			continue
		}
		if err := os.Chmod(path, fi.Mode()&^0o077); err != nil {
			return fmt.Errorf("%s holds secrets and other users can read it (mode %04o); making it private failed: %w (run chmod go-rwx on it as its owner)", path, old, err)
		}
		log.Warn("made private a file that holds secrets: other users could read it", "path", path,
			"was", fmt.Sprintf("%04o", old), "now", fmt.Sprintf("%04o", old&^0o077))
	}
	return nil
}

// IsPrivate reports whether only its owner may read or write the file at path: for a
// warning about a file the user gave (a token file), which is not ours to change.
func IsPrivate(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().Perm()&0o077 == 0
}
