package api

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
)

// Identifier prefixes, spelled as AWS DRS spells them where DRS has the object.
// Every generated id is the prefix followed by 17 lowercase hexadecimal digits.
const (
	PrefixSourceServer     = "s-"
	PrefixSnapshot         = "pit-"
	PrefixJob              = "drsjob-"
	PrefixRecoveryInstance = "i-"
	PrefixReplicator       = "rep-"
	PrefixAccount          = "acct-"
	PrefixInstance         = "inst-"
	PrefixFailbackClient   = "fbc-"
	PrefixGroup            = "cg-"   // consistency group
	PrefixGroupPoint       = "gpit-" // group point: the PITs of a group's members at one instant
)

const idDigits = 17

// NewID returns a new random identifier with the given prefix, such as
// "s-0a1b2c3d4e5f60718" for PrefixSourceServer.
func NewID(prefix string) string {
	var b [9]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("lifeboat: the system's random source failed: " + err.Error())
	}
	return prefix + hex.EncodeToString(b[:])[:idDigits]
}

// ValidID reports whether id is prefix followed by 17 lowercase hexadecimal digits.
func ValidID(prefix, id string) bool {
	rest, ok := strings.CutPrefix(id, prefix)
	if !ok || len(rest) != idDigits {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ValidName reports whether s is usable as a user-chosen name (site ids, replicator
// names, account names): 1 to 63 characters of lowercase letters, digits and '-',
// starting with a letter or digit.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
