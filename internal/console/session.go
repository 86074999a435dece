package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Cookies. The __Host- prefix makes browsers refuse them unless Secure, for the whole
// host (Path=/) and without a Domain: no other site, subdomain or plain-HTTP page can
// set or read them.
const (
	sessionCookie = "__Host-lifeboat-session"
	signInCookie  = "__Host-lifeboat-sign-in" // the sign-in form's CSRF token, before a session exists
	csrfField     = "csrf"
	maxFormBytes  = 64 << 10
)

// session is a signed-in user. Its token stays on the server; the browser holds only
// the session id, of which the store keeps only the SHA-256.
type session struct {
	key     string // hex SHA-256 of the cookie value
	token   string // the API token the user signed in with
	who     api.Whoami
	csrf    string
	client  *api.Client
	created time.Time

	mu    sync.Mutex
	seen  time.Time
	flash string // a message for the next page shown
}

func (s *session) setFlash(msg string) {
	s.mu.Lock()
	s.flash = msg
	s.mu.Unlock()
}

func (s *session) takeFlash() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.flash
	s.flash = ""
	return m
}

// sessions holds the signed-in sessions in memory: at most max, each ended after idle
// without use or life after sign-in. A restart of the control plane signs everyone out.
type sessions struct {
	mu         sync.Mutex
	m          map[string]*session
	max        int
	idle, life time.Duration
	now        func() time.Time
}

func newSessions(maxN int, idle, life time.Duration, now func() time.Time) *sessions {
	return &sessions{m: map[string]*session{}, max: maxN, idle: idle, life: life, now: now}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

func keyOf(cookie string) string {
	sum := sha256.Sum256([]byte(cookie))
	return hex.EncodeToString(sum[:])
}

// add stores s under a new random id and returns the id (the cookie's value). When
// the store is full, expired sessions go first, then the least recently used one.
func (st *sessions) add(s *session) string {
	id := randomToken()
	s.key = keyOf(id)
	now := st.now()
	s.created, s.seen = now, now
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.m) >= st.max {
		var oldest *session
		for k, o := range st.m {
			if st.expired(o, now) {
				delete(st.m, k)
				continue
			}
			if oldest == nil || o.lastSeen().Before(oldest.lastSeen()) {
				oldest = o
			}
		}
		if len(st.m) >= st.max && oldest != nil {
			delete(st.m, oldest.key)
		}
	}
	st.m[s.key] = s
	return id
}

func (s *session) lastSeen() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}

func (st *sessions) expired(s *session, now time.Time) bool {
	return now.Sub(s.created) >= st.life || now.Sub(s.lastSeen()) >= st.idle
}

// get returns the live session of a cookie value, and marks it used.
func (st *sessions) get(id string) (*session, bool) {
	if id == "" {
		return nil, false
	}
	key := keyOf(id)
	now := st.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	s, ok := st.m[key]
	if !ok {
		return nil, false
	}
	if st.expired(s, now) {
		delete(st.m, key)
		return nil, false
	}
	s.mu.Lock()
	s.seen = now
	s.mu.Unlock()
	return s, true
}

func (st *sessions) remove(s *session) {
	st.mu.Lock()
	delete(st.m, s.key)
	st.mu.Unlock()
}

// count is the number of sessions held (tests).
func (st *sessions) count() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.m)
}

func setCookie(w http.ResponseWriter, name, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: int(maxAge / time.Second),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

func clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

// tokensEqual compares two secrets in constant time; empty never matches.
func tokensEqual(a, b string) bool {
	return a != "" && b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// handler is a console page or action of a signed-in user.
type handler func(w http.ResponseWriter, r *http.Request, s *session)

// signedIn gives h the request's session, or sends the browser to sign in (a page) or
// refuses (an action or the event stream). On POST it checks the CSRF token first.
func (c *Console) signedIn(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var s *session
		if ck, err := r.Cookie(sessionCookie); err == nil {
			s, _ = c.sessions.get(ck.Value)
		}
		if s == nil {
			if r.Method == http.MethodGet && r.URL.Path != Prefix+"events" {
				http.Redirect(w, r, Prefix+"sign-in?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			c.fail(w, r, nil, http.StatusUnauthorized, "you are not signed in, or your session ended: sign in again")
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
			if err := r.ParseForm(); err != nil {
				c.fail(w, r, s, http.StatusBadRequest, "the form could not be read: "+err.Error())
				return
			}
			if !tokensEqual(r.PostForm.Get(csrfField), s.csrf) {
				c.fail(w, r, s, http.StatusForbidden, "this form has no valid CSRF token (it was not sent from this session's page): reload the page and try again")
				return
			}
		}
		h(w, r, s)
	}
}

// signInPage shows the sign-in form, with a fresh pre-session CSRF token.
func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	tok := randomToken()
	setCookie(w, signInCookie, tok, 30*time.Minute)
	c.render(w, r, nil, http.StatusOK, "sign-in", "Sign in", signInData{CSRF: tok, Next: safeNext(r.URL.Query().Get("next"))})
}

type signInData struct {
	CSRF, Next, Error string
}

// signIn exchanges an API token for a session: the API's whoami checks the token.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, nil, http.StatusBadRequest, "the form could not be read: "+err.Error())
		return
	}
	ck, err := r.Cookie(signInCookie)
	if err != nil || !tokensEqual(r.PostForm.Get(csrfField), ck.Value) {
		c.fail(w, r, nil, http.StatusForbidden, "this sign-in form has no valid CSRF token: reload the sign-in page and try again")
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	again := func(status int, msg string) {
		tok := randomToken()
		setCookie(w, signInCookie, tok, 30*time.Minute)
		c.render(w, r, nil, status, "sign-in", "Sign in", signInData{CSRF: tok, Next: next, Error: msg})
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	if token == "" {
		again(http.StatusBadRequest, "Paste an API token (lifeboat tokens create --kind api --role viewer).")
		return
	}
	client, err := c.newClient(token)
	if err != nil {
		again(http.StatusInternalServerError, err.Error())
		return
	}
	who, err := client.Whoami(withRemote(r))
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
		again(ae.Status, ae.Message)
		return
	case err != nil:
		c.log.Error("console sign-in failed", "err", err)
		again(http.StatusInternalServerError, "the control plane could not check the token; its log has the details")
		return
	case who.Kind != api.CallerUser:
		again(http.StatusForbidden, "this is an install token: sign in with an API token (lifeboat tokens create --kind api)")
		return
	}
	s := &session{token: token, who: who, csrf: randomToken(), client: client}
	id := c.sessions.add(s)
	clearCookie(w, signInCookie)
	setCookie(w, sessionCookie, id, c.cfg.SessionLifetime)
	c.log.Info("console sign-in", "token", who.ID, "role", who.Role, "account", who.AccountID, "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) signOut(w http.ResponseWriter, r *http.Request, s *session) {
	c.sessions.remove(s)
	clearCookie(w, sessionCookie)
	http.Redirect(w, r, Prefix+"sign-in", http.StatusSeeOther)
}

// safeNext keeps a redirect after sign-in within the console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") ||
		strings.HasPrefix(next, Prefix+"sign-") || strings.HasPrefix(next, Prefix+"events") {
		return Prefix + "servers"
	}
	return next
}
