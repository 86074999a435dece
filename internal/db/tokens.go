package db

import (
	"database/sql"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Token is a token row: the API's view plus what only the server sees.
type Token struct {
	api.Token
	AccountID  string
	SecretHash string
}

const tokenCols = `id, account_id, kind, role, scope, secret_hash, description, created_by, created_at, expires_at, uses_left, uses, revoked_at, allow_replace`

func scanToken(row interface{ Scan(...any) error }) (Token, error) {
	var tk Token
	var role string
	var created int64
	var expires, usesLeft, revoked sql.NullInt64
	var allowReplace int
	err := row.Scan(&tk.ID, &tk.AccountID, &tk.Kind, &role, &tk.Scope, &tk.SecretHash, &tk.Description,
		&tk.CreatedBy, &created, &expires, &usesLeft, &tk.Uses, &revoked, &allowReplace)
	if err != nil {
		return tk, classify(err)
	}
	tk.Role = api.Role(role)
	tk.AllowReplace = allowReplace != 0
	tk.CreatedAt = fromMS(created)
	tk.ExpiresAt = optTime(expires)
	tk.RevokedAt = optTime(revoked)
	if usesLeft.Valid {
		n := int(usesLeft.Int64)
		tk.UsesLeft = &n
	}
	return tk, nil
}

// CreateToken inserts a token.
func (t *Tx) CreateToken(tk Token) error {
	var usesLeft any
	if tk.UsesLeft != nil {
		usesLeft = *tk.UsesLeft
	}
	_, err := t.exec(`INSERT INTO tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		tk.ID, tk.AccountID, tk.Kind, string(tk.Role), tk.Scope, tk.SecretHash, tk.Description, tk.CreatedBy,
		ms(tk.CreatedAt), nullMS(tk.ExpiresAt), usesLeft, tk.Uses, nullMS(tk.RevokedAt), boolInt(tk.AllowReplace))
	return err
}

// Token returns a token by id.
func (t *Tx) Token(id string) (Token, error) {
	return scanToken(t.queryRow(`SELECT `+tokenCols+` FROM tokens WHERE id = ?`, id))
}

// Tokens lists an account's tokens, newest first.
func (t *Tx) Tokens(accountID string) ([]Token, error) {
	rows, err := t.query(`SELECT `+tokenCols+` FROM tokens WHERE account_id = ? ORDER BY created_at DESC, id`, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		tk, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, tk)
	}
	return out, rows.Err()
}

// RevokeToken marks a token revoked.
func (t *Tx) RevokeToken(accountID, id string, now time.Time) error {
	return t.execOne(`UPDATE tokens SET revoked_at = ? WHERE account_id = ? AND id = ? AND revoked_at IS NULL`, ms(now), accountID, id)
}

// ConsumeToken counts one use of a token, atomically: ErrNotFound when it has no use
// left (or is expired or revoked at now).
func (t *Tx) ConsumeToken(id string, now time.Time) error {
	return t.execOne(`UPDATE tokens SET uses = uses + 1,
		uses_left = CASE WHEN uses_left IS NULL THEN NULL ELSE uses_left - 1 END
		WHERE id = ? AND (uses_left IS NULL OR uses_left > 0)
		AND (expires_at IS NULL OR expires_at > ?) AND revoked_at IS NULL`, id, ms(now))
}
