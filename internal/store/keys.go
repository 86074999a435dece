package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/blake3"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// MasterKey is a key that wraps a repository's secret: the control plane's master key
// (a key file, kept outside the store) or an account key (docs/store-format.md §2). A
// repository may be wrapped by several; whoever holds its objects but none of its keys
// reads nothing.
type MasterKey [32]byte

const masterKeyHeader = "lifeboat-master-key-v1"

// Fingerprint identifies a master key in messages without revealing it.
func (k MasterKey) Fingerprint() string {
	var out [8]byte
	blake3.DeriveKey("lifeboat 2026-11-25 master key fingerprint", k[:], out[:])
	return hex.EncodeToString(out[:])
}

// NewMasterKey returns a random master key.
func NewMasterKey() (MasterKey, error) {
	var k MasterKey
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("the system's random source failed: %w", err)
	}
	return k, nil
}

// LoadMasterKey reads a key file written by WriteMasterKey.
func LoadMasterKey(path string) (MasterKey, error) {
	var k MasterKey
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return k, fmt.Errorf("master key file %s does not exist: give the key file the repository was created with", path)
		}
		return k, fmt.Errorf("read master key file: %w", err)
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 || fields[0] != masterKeyHeader || len(fields[1]) != 64 {
		return k, fmt.Errorf("%s is not a Lifeboat master key file (expected %q and 64 hex digits)", path, masterKeyHeader)
	}
	if _, err := hex.Decode(k[:], []byte(fields[1])); err != nil {
		return k, fmt.Errorf("%s is not a Lifeboat master key file: %w", path, err)
	}
	return k, nil
}

// WriteMasterKey writes k to path with mode 0600; it refuses to replace an existing file.
func WriteMasterKey(path string, k MasterKey) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create the directory of %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write master key file: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s %s\n", masterKeyHeader, hex.EncodeToString(k[:]))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write master key file %s: %w", path, err)
	}
	return nil
}

// LoadOrCreateMasterKey loads the key file at path, or creates it with a new key.
func LoadOrCreateMasterKey(path string) (MasterKey, error) {
	k, err := LoadMasterKey(path)
	if err == nil {
		return k, nil
	}
	if _, serr := os.Stat(path); !errors.Is(serr, fs.ErrNotExist) {
		return k, err
	}
	if k, err = NewMasterKey(); err != nil {
		return k, err
	}
	return k, WriteMasterKey(path, k)
}

// Wrap seals plaintext with k (AES-256-GCM, nonce ‖ ciphertext ‖ tag) for one purpose,
// named by aad: what is sealed for one purpose does not open for another. The control
// plane wraps account keys with its master key this way, the account id in aad.
func (k MasterKey) Wrap(plaintext []byte, aad string) []byte {
	aead, err := newGCM(k[:])
	if err != nil {
		panic("lifeboat: AES-256-GCM with a 32-byte key failed: " + err.Error())
	}
	return sealWith(aead, nil, plaintext, []byte(aad))
}

// Unwrap opens what Wrap sealed with k and the same aad; ErrWrongKey when it does not
// authenticate (another key, another purpose, or damaged).
func (k MasterKey) Unwrap(sealed []byte, aad string) ([]byte, error) {
	aead, err := newGCM(k[:])
	if err != nil {
		return nil, err
	}
	plain, err := openWith(aead, nil, sealed, []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("%w (master key %s)", ErrWrongKey, k.Fingerprint())
	}
	return plain, nil
}

// keyObject is the stored form of the repository secret, wrapped by a master key.
type keyObject struct {
	Version     int       `json:"version"`
	Created     time.Time `json:"created"`
	Fingerprint string    `json:"masterKeyFingerprint"`
	Wrapped     []byte    `json:"wrapped"` // nonce || AES-256-GCM(secret) with the master key
}

const keyWrapAAD = "lifeboat repository key v1"

func wrapSecret(mk MasterKey, secret []byte) (keyObject, error) {
	aead, err := newGCM(mk[:])
	if err != nil {
		return keyObject{}, err
	}
	return keyObject{Version: 1, Created: time.Now().UTC(), Fingerprint: mk.Fingerprint(),
		Wrapped: sealWith(aead, nil, secret, []byte(keyWrapAAD))}, nil
}

func (o keyObject) unwrap(mk MasterKey) ([]byte, error) {
	aead, err := newGCM(mk[:])
	if err != nil {
		return nil, err
	}
	return openWith(aead, nil, o.Wrapped, []byte(keyWrapAAD))
}

func decodeKeyObject(data []byte) (keyObject, error) {
	var o keyObject
	if err := json.Unmarshal(data, &o); err != nil {
		return o, err
	}
	if o.Version != 1 || len(o.Wrapped) != gcmNonce+32+gcmTag {
		return o, errors.New("unknown version or wrapped key of the wrong size")
	}
	return o, nil
}

const (
	gcmNonce = 12
	gcmTag   = 16
	// sealOverhead is what encryption adds to a plaintext.
	sealOverhead = gcmNonce + gcmTag
)

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sealWith appends nonce || ciphertext || tag of plaintext to dst.
func sealWith(aead cipher.AEAD, dst, plaintext, aad []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, gcmNonce)...)
	if _, err := rand.Read(dst[start:]); err != nil {
		panic("lifeboat: the system's random source failed: " + err.Error())
	}
	return aead.Seal(dst, dst[start:start+gcmNonce], plaintext, aad)
}

// errAuth means a ciphertext did not authenticate: corrupt, truncated, or encrypted
// under another key or for another object.
var errAuth = errors.New("does not authenticate (corrupt, truncated, or not this repository's)")

// openWith decrypts nonce || ciphertext || tag, appending the plaintext to dst.
func openWith(aead cipher.AEAD, dst, sealed, aad []byte) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, errAuth
	}
	out, err := aead.Open(dst, sealed[:gcmNonce], sealed[gcmNonce:], aad)
	if err != nil {
		return nil, errAuth
	}
	return out, nil
}

// findSecret returns the repository secret from the first key object of be that mk
// unwraps, or nil and the fingerprints of the keys that made them.
func findSecret(ctx context.Context, be backend.Backend, mk MasterKey) (secret []byte, prints []string, err error) {
	err = be.List(ctx, "keys/", func(oi backend.ObjectInfo) error {
		data, err := be.Get(ctx, oi.Name)
		if err != nil {
			return err
		}
		ko, err := decodeKeyObject(data)
		if err != nil {
			return corrupt(oi.Name, err)
		}
		prints = append(prints, ko.Fingerprint)
		if s, err := ko.unwrap(mk); err == nil {
			secret = s
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, prints, fmt.Errorf("read the repository keys at %s: %w", be.Location(), err)
	}
	return secret, prints, nil
}

// putKeyObject stores the secret wrapped by mk as a new key object.
func putKeyObject(ctx context.Context, be backend.Backend, mk MasterKey, secret []byte) error {
	ko, err := wrapSecret(mk, secret)
	if err != nil {
		return err
	}
	kb, _ := json.Marshal(ko)
	if err := be.Put(ctx, "keys/"+randomHex(16), kb, backend.PutOptions{}); err != nil {
		return fmt.Errorf("write a repository key: %w", err)
	}
	return nil
}

// AddKey makes k open the repository too: it stores the repository secret wrapped by k,
// unless a key object opens with k already (so calling it again changes nothing). The
// control plane wraps each account's repository by the account key and by its master
// key, so that either opens it (docs/store-format.md §2).
func (r *Repo) AddKey(ctx context.Context, k MasterKey) error {
	if s, _, err := findSecret(ctx, r.be, k); err != nil {
		return err
	} else if s != nil {
		return nil
	}
	if err := putKeyObject(ctx, r.be, k, r.keys.secret); err != nil {
		return err
	}
	r.log.Info("repository key added", "store", r.be.Location(), "key", k.Fingerprint())
	return nil
}

// keys are the repository's working keys, derived from its secret.
type keys struct {
	secret  []byte // kept to wrap it for another key (AddKey)
	aead    cipher.AEAD
	hashers sync.Pool // keyed BLAKE3 hashers
}

func deriveKeys(secret []byte) (*keys, error) {
	var encKey, idKey [32]byte
	blake3.DeriveKey("lifeboat 2026-11-25 chunk encryption", secret, encKey[:])
	blake3.DeriveKey("lifeboat 2026-11-25 chunk id", secret, idKey[:])
	aead, err := newGCM(encKey[:])
	if err != nil {
		return nil, err
	}
	proto, err := blake3.NewKeyed(idKey[:])
	if err != nil {
		return nil, err
	}
	k := &keys{secret: secret, aead: aead}
	k.hashers.New = func() any { return proto.Clone() }
	return k, nil
}

// id returns the keyed hash of a chunk's plaintext.
func (k *keys) id(data []byte) ID {
	h := k.hashers.Get().(*blake3.Hasher)
	h.Reset()
	_, _ = h.Write(data)
	var id ID
	h.Sum(id[:0])
	k.hashers.Put(h)
	return id
}

func (k *keys) seal(dst, plaintext, aad []byte) []byte { return sealWith(k.aead, dst, plaintext, aad) }

func (k *keys) open(dst, sealed, aad []byte) ([]byte, error) {
	return openWith(k.aead, dst, sealed, aad)
}
