package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// negotiation is the handshake phase of one connection.
type negotiation struct {
	srv        *Server
	c          *conn
	log        *slog.Logger
	noZeroes   bool
	structured bool
	metaFor    *string // the export base:allocation was selected for; nil: none
	options    int
}

// negotiate runs the handshake up to the transmission phase: it returns the export the
// client chose, or why the connection ends.
func (s *Server) negotiate(ctx context.Context, c *conn, log *slog.Logger) (*transmission, error) {
	ctx, cancel := context.WithTimeout(ctx, negotiationTimeout)
	defer cancel()
	end := time.Now().Add(negotiationTimeout)
	if err := c.readBy(end); err != nil {
		return nil, err
	}
	if err := c.get().SetWriteDeadline(end); err != nil {
		return nil, fmt.Errorf("set the negotiation's deadline: %w", err)
	}
	n := &negotiation{srv: s, c: c, log: log}
	if err := n.greet(); err != nil {
		return nil, err
	}
	for {
		opt, data, err := n.readOption()
		if err != nil {
			return nil, err
		}
		t, err := n.handle(ctx, opt, data)
		if err != nil || t != nil {
			return t, err
		}
	}
}

// greet sends the server's greeting and reads the client's flags.
func (n *negotiation) greet() error {
	b := make([]byte, 0, 18)
	b = binary.BigEndian.AppendUint64(b, magicInit)
	b = binary.BigEndian.AppendUint64(b, magicOption)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if err := n.write(b); err != nil {
		return err
	}
	var f [4]byte
	if _, err := io.ReadFull(n.c, f[:]); err != nil {
		return n.c.readErr("its flags", err)
	}
	flags := binary.BigEndian.Uint32(f[:])
	if flags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return fmt.Errorf("the client sent unknown handshake flags %#x", flags)
	}
	if flags&clientFixedNewstyle == 0 {
		return errors.New("the client does not speak fixed newstyle negotiation, the only one this server does")
	}
	n.noZeroes = flags&clientNoZeroes != 0
	return nil
}

// readOption reads the next option and its data, within the bounds.
func (n *negotiation) readOption() (uint32, []byte, error) {
	var h [optionHeaderLen]byte
	if _, err := io.ReadFull(n.c, h[:]); err != nil {
		return 0, nil, n.c.readErr("an option", err)
	}
	if m := binary.BigEndian.Uint64(h[0:8]); m != magicOption {
		return 0, nil, fmt.Errorf("the client sent an option with bad magic %#x", m)
	}
	opt, length := binary.BigEndian.Uint32(h[8:12]), binary.BigEndian.Uint32(h[12:16])
	n.options++
	if n.options > maxOptions {
		return 0, nil, fmt.Errorf("the client sent more than %d options", maxOptions)
	}
	if length > maxOptionLen {
		if opt != optExportName {
			_ = n.replyErr(opt, repErrTooBig, fmt.Sprintf("option data is limited to %d bytes", maxOptionLen))
		}
		return 0, nil, fmt.Errorf("the client sent %d bytes of data with option %d, more than the %d allowed", length, opt, maxOptionLen)
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(n.c, data); err != nil {
		return 0, nil, n.c.readErr(fmt.Sprintf("the data of option %d", opt), err)
	}
	return opt, data, nil
}

// handle answers one option; it returns a transmission when the client enters that
// phase.
func (n *negotiation) handle(ctx context.Context, opt uint32, data []byte) (*transmission, error) {
	if n.srv.TLSConfig != nil && !n.c.isTLS() {
		switch opt {
		case optStartTLS, optAbort:
		case optExportName:
			return nil, errors.New("the client chose an export with NBD_OPT_EXPORT_NAME before starting the TLS this server requires")
		default:
			return nil, n.replyErr(opt, repErrTLSReqd, "this server requires TLS: send NBD_OPT_STARTTLS first")
		}
	}
	switch opt {
	case optExportName:
		return n.exportName(ctx, data)
	case optAbort:
		_ = n.reply(opt, repAck, nil) // the client may already be gone
		return nil, errClientDone
	case optList:
		return nil, n.list(ctx, data)
	case optStartTLS:
		return nil, n.startTLS(ctx, data)
	case optInfo, optGo:
		return n.infoGo(ctx, opt, data)
	case optStructuredReply:
		return nil, n.structuredReply(data)
	case optListMetaContext, optSetMetaContext:
		return nil, n.metaContext(opt, data)
	}
	return nil, n.replyErr(opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
}

// exportName answers NBD_OPT_EXPORT_NAME, which cannot carry an error: an export that
// cannot be served ends the connection.
func (n *negotiation) exportName(ctx context.Context, data []byte) (*transmission, error) {
	name := string(data)
	if err := validName(name); err != nil {
		return nil, fmt.Errorf("the client chose an export with NBD_OPT_EXPORT_NAME: %w", err)
	}
	t, err := n.open(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("the client chose export %q with NBD_OPT_EXPORT_NAME: %w", clip(name), err)
	}
	b := make([]byte, 0, 10+124)
	b = binary.BigEndian.AppendUint64(b, t.size)
	b = binary.BigEndian.AppendUint16(b, t.flags)
	if !n.noZeroes {
		b = append(b, make([]byte, 124)...)
	}
	if err := n.write(b); err != nil {
		return nil, err
	}
	return t, nil
}

// open looks an export up and prepares its transmission phase.
func (n *negotiation) open(ctx context.Context, name string) (*transmission, error) {
	e, err := n.srv.Exports(ctx, name)
	if err != nil {
		if !errors.Is(err, ErrUnknownExport) {
			n.log.Warn("opening an NBD export failed", "export", clip(name), "err", err)
		}
		return nil, fmt.Errorf("%w: %w", ErrUnknownExport, err)
	}
	size := e.Size()
	if size < 0 {
		n.log.Warn("an NBD export has a negative size", "export", clip(name), "size", size)
		return nil, fmt.Errorf("%w: export %q has a negative size", ErrUnknownExport, clip(name))
	}
	flags := tflagHasFlags | tflagReadOnly | tflagSendFlush | tflagMultiConn
	if n.structured {
		flags |= tflagSendDF
	}
	return newTransmission(n.c, n.srv, e, name, uint64(size), flags, n.structured,
		n.metaFor != nil && *n.metaFor == name), nil
}

// list answers NBD_OPT_LIST.
func (n *negotiation) list(ctx context.Context, data []byte) error {
	const opt = optList
	if len(data) != 0 {
		return n.replyErr(opt, repErrInvalid, "NBD_OPT_LIST carries no data")
	}
	if n.srv.List == nil {
		return n.replyErr(opt, repErrPolicy, "this server does not list its exports")
	}
	names, err := n.srv.List(ctx)
	if err != nil {
		n.log.Warn("listing NBD exports failed", "err", err)
		if ctx.Err() != nil {
			return n.replyErr(opt, repErrShutdown, "the server is stopping")
		}
		return n.replyErr(opt, repErrPolicy, "the server could not list its exports")
	}
	sent := 0
	for _, name := range names {
		if sent == maxListed {
			break
		}
		if validName(name) != nil {
			continue
		}
		b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(name)), uint32(len(name)))
		if err := n.reply(opt, repServer, append(b, name...)); err != nil {
			return err
		}
		sent++
	}
	return n.reply(opt, repAck, nil)
}

// startTLS answers NBD_OPT_STARTTLS and, when it is accepted, upgrades the connection
// and forgets what was negotiated before.
func (n *negotiation) startTLS(ctx context.Context, data []byte) error {
	const opt = optStartTLS
	switch {
	case len(data) != 0:
		return n.replyErr(opt, repErrInvalid, "NBD_OPT_STARTTLS carries no data")
	case n.c.isTLS():
		return n.replyErr(opt, repErrInvalid, "TLS is already started")
	case n.srv.TLSConfig == nil:
		return n.replyErr(opt, repErrPolicy, "this server does not offer TLS")
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return err
	}
	cfg := n.srv.TLSConfig.Clone()
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	t := tls.Server(n.c.get(), cfg)
	if err := t.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake with the client failed: %w", err)
	}
	n.c.upgrade(t)
	n.structured, n.metaFor = false, nil
	return nil
}

// structuredReply answers NBD_OPT_STRUCTURED_REPLY.
func (n *negotiation) structuredReply(data []byte) error {
	const opt = optStructuredReply
	switch {
	case len(data) != 0:
		return n.replyErr(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY carries no data")
	case n.structured:
		return n.replyErr(opt, repErrInvalid, "structured replies are already negotiated")
	}
	n.structured = true
	return n.reply(opt, repAck, nil)
}

// write sends b whole.
func (n *negotiation) write(b []byte) error {
	if _, err := n.c.get().Write(b); err != nil {
		return fmt.Errorf("writing to the client: %w", err)
	}
	return nil
}

// reply sends a reply to an option.
func (n *negotiation) reply(opt, typ uint32, data []byte) error {
	return n.write(optionReply(opt, typ, data))
}

// replyErr sends an error reply with a message for the client's user.
func (n *negotiation) replyErr(opt, typ uint32, msg string) error {
	n.log.Debug("refused an NBD option", "option", opt, "reply", typ, "why", msg)
	return n.reply(opt, typ, []byte(clip(msg)))
}
