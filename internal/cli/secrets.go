package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/lifeboat-dr/lifeboat/internal/secfile"
)

// maxSecretBytes bounds a secret read from a file or stdin: tokens are under 100 bytes.
const maxSecretBytes = 4096

// Environment variables that carry secrets. A process's environment is readable only by
// its own user (/proc/PID/environ is mode 0400), unlike its argv.
const (
	envToken = "LIFEBOAT_TOKEN"
	envDB    = "LIFEBOAT_DB"
)

// resolveToken sets g.token from --token-file (a file, or "-" for one line of stdin),
// --token (deprecated: it warns) or LIFEBOAT_TOKEN, in that order.
func (g *globals) resolveToken(tokenFlagGiven bool) error {
	switch {
	case g.tokenFile != "" && tokenFlagGiven:
		return usagef("give --token-file or --token, not both")
	case g.tokenFile != "":
		tok, err := g.readSecret(g.tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		g.token = tok
		if g.tokenFile != "-" && !secfile.IsPrivate(g.tokenFile) {
			fmt.Fprintf(g.stderr, "lifeboat: warning: other users of this machine can read the token in %s: chmod 600 it\n", g.tokenFile)
		}
	case tokenFlagGiven:
		g.warnSecretInArgv("--token", "--token-file FILE, --token-file - (one line on stdin) or env "+envToken)
	default:
		g.token = os.Getenv(envToken)
	}
	return nil
}

// warnSecretInArgv prints one line saying that a secret given on the command line can be
// read by every user of the machine, and what to use instead.
func (g *globals) warnSecretInArgv(flag, instead string) {
	fmt.Fprintf(g.stderr, "lifeboat: warning: %s shows the secret to every user of this machine (ps, /proc/PID/cmdline): use %s instead\n", flag, instead)
}

// readSecret reads a secret from the file at path, or one line from stdin when path is
// "-". Surrounding white space is dropped; an empty secret, one with white space inside
// (two lines, say) or one over maxSecretBytes is refused.
func (g *globals) readSecret(path string) (string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = readLine(g.stdin, maxSecretBytes)
		if err != nil {
			return "", fmt.Errorf("read the secret from stdin: %w", err)
		}
	} else {
		b, err = readFileMax(path, maxSecretBytes)
		if err != nil {
			return "", err
		}
	}
	s := strings.TrimSpace(string(b))
	switch {
	case s == "":
		return "", fmt.Errorf("%s holds no secret: write the token in it, alone on one line", describeSecretSource(path))
	case strings.ContainsAny(s, " \t\r\n"):
		return "", fmt.Errorf("%s holds more than one word: write the token in it, alone on one line", describeSecretSource(path))
	}
	return s, nil
}

func describeSecretSource(path string) string {
	if path == "-" {
		return "stdin"
	}
	return path
}

// readFileMax reads a whole file of at most max bytes.
func readFileMax(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := readAllMax(f, max)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// readAllMax reads all of r, refusing more than max bytes.
func readAllMax(r io.Reader, max int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(max)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, fmt.Errorf("larger than %d bytes, more than this takes", max)
	}
	return b, nil
}

// readLine reads one line (without its newline) of at most max bytes from r. It reads a
// byte at a time, so that what follows the line stays in r for the command.
func readLine(r io.Reader, max int) ([]byte, error) {
	var line bytes.Buffer
	var c [1]byte
	for empty := 0; empty < 100; {
		n, err := r.Read(c[:])
		if n == 0 {
			empty++ // a reader may return nothing a few times, not forever
		} else {
			empty = 0
			if c[0] == '\n' {
				return line.Bytes(), nil
			}
			if line.Len() == max {
				return nil, fmt.Errorf("the line is longer than %d bytes", max)
			}
			line.WriteByte(c[0])
		}
		if errors.Is(err, io.EOF) {
			return line.Bytes(), nil
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, io.ErrNoProgress
}

// promptSecret asks for a secret on the terminal without echoing it. It fails when stdin
// is not a terminal, with hint saying how to give the secret instead.
func (g *globals) promptSecret(prompt, hint string) (string, error) {
	f, ok := g.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", usagef("%s", hint)
	}
	fmt.Fprint(g.stderr, prompt)
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(g.stderr)
	if err != nil {
		return "", fmt.Errorf("read the secret from the terminal: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", usagef("%s", hint)
	}
	return s, nil
}
