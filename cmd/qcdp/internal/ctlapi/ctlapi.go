// Package ctlapi is the plumbing both qcdp daemons' local control APIs
// share: JSON over HTTP on a unix socket that only root may open, errors
// carried as {error, code} so a client tells them apart by code, never by
// text.
package ctlapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"time"
)

// maxReply bounds what a client reads of one reply.
const maxReply = 16 << 20

// Error is an error reply: Code is stable and meant for programs, Msg for
// people.
type Error struct {
	Status int    `json:"-"`
	Msg    string `json:"error"`
	Code   string `json:"code"`
}

func (e *Error) Error() string { return e.Msg }

// Codes of errors every API uses.
const (
	CodeNotFound = "not-found"
	CodeInvalid  = "invalid"
	CodeFailed   = "failed"
)

// Is reports whether err is an error reply with code.
func Is(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Serve serves h on a unix socket at path until ctx ends. Only root may
// use it: the socket is created 0600 (no window with another mode), and a
// connection from any other user is closed unanswered.
func Serve(ctx context.Context, path string, h http.Handler) error {
	os.Remove(path)
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if !fromRoot(c) {
				c.Close()
			}
			return ctx
		}}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("control API on %s: %w", path, err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-served
		os.Remove(path)
		return nil
	}
}

// WriteJSON writes v as the reply.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// Reply writes v, or err as an error reply: codes maps sentinel errors to
// their codes (404 for CodeNotFound, 400 for CodeInvalid); any other error
// is a 500 "failed".
func Reply(w http.ResponseWriter, v any, err error, codes map[error]string) {
	if err == nil {
		if v == nil {
			v = struct{}{}
		}
		WriteJSON(w, http.StatusOK, v)
		return
	}
	code, status := CodeFailed, http.StatusInternalServerError
	for sentinel, c := range codes {
		if errors.Is(err, sentinel) {
			code, status = c, http.StatusBadRequest
			if c == CodeNotFound {
				status = http.StatusNotFound
			}
			break
		}
	}
	WriteJSON(w, status, &Error{Msg: err.Error(), Code: code})
}

// Client talks to a control API.
type Client struct {
	path   string
	daemon string // "host" or "replica": whose socket, for messages
	hc     *http.Client
}

// NewClient returns a client of the control socket at path, served by the
// daemon `qcdp DAEMON` ("host" or "replica").
func NewClient(path, daemon string) *Client {
	return &Client{path: path, daemon: daemon, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", path)
		},
	}}}
}

// clientError is an error of the client's side of an exchange: a message
// for people that names the daemon and its socket, and the cause kept for
// errors.Is.
type clientError struct {
	msg string
	err error
}

func (e *clientError) Error() string { return e.msg }
func (e *clientError) Unwrap() error { return e.err }

// Do sends one request and decodes the reply into out (nil to discard). An
// error reply comes back as *Error.
func (c *Client) Do(ctx context.Context, method, path string, q url.Values, out any) error {
	u := "http://qcdp" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.failed(ctx, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return c.failed(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(body, e) != nil || e.Msg == "" {
			return &clientError{msg: fmt.Sprintf("the %s daemon at %s answered %s", c.daemon, c.path, resp.Status)}
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return &clientError{fmt.Sprintf("cannot read the answer of the %s daemon at %s: %v", c.daemon, c.path, err), err}
		}
	}
	return nil
}

// failed says why an exchange with the daemon failed, without the
// request's URL (it is internal).
func (c *Client) failed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var op *net.OpError
	switch {
	case errors.As(err, &op) && op.Op == "dial" && errors.Is(err, os.ErrPermission):
		return &clientError{fmt.Sprintf("cannot reach the %s daemon at %s: permission denied (its control socket is root's only)", c.daemon, c.path), err}
	case errors.As(err, &op) && op.Op == "dial":
		return &clientError{fmt.Sprintf("cannot reach the %s daemon at %s: is `qcdp %s` running?", c.daemon, c.path, c.daemon), err}
	case os.Geteuid() != 0:
		return &clientError{fmt.Sprintf("the %s daemon at %s closed the connection: its control API answers root only", c.daemon, c.path), err}
	}
	return &clientError{fmt.Sprintf("lost the connection to the %s daemon at %s: %v", c.daemon, c.path, err), err}
}

// fromRoot reports whether the peer of a unix connection runs as root.
func fromRoot(c net.Conn) bool {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return false
	}
	return cred.Uid == 0
}
