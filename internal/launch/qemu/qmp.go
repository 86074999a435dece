package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// QMP, the QEMU Machine Protocol, is JSON over a unix socket, one message a line: QEMU
// greets, the client negotiates capabilities (qmp_capabilities), then sends commands
// ({"execute": …, "arguments": …, "id": …}) and reads their answers ({"return": …} or
// {"error": {"class", "desc"}}), with asynchronous events ({"event", "data",
// "timestamp"}) in between.

// maxQMPLine bounds one QMP message (query-qmp-schema, the largest answer, is ~200 KiB).
const maxQMPLine = 16 << 20

// QMPError is an error QEMU answered a command with.
type QMPError struct {
	Class string `json:"class"` // GenericError, CommandNotFound, DeviceNotActive, …
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string { return "QEMU refused: " + e.Desc + " (" + e.Class + ")" }

// Event is an asynchronous QMP event, such as SHUTDOWN, STOP, RESUME or POWERDOWN.
type Event struct {
	Name string
	Data json.RawMessage // null when the event has no data
	Time time.Time
}

// Greeting is what QEMU says when a client connects.
type Greeting struct {
	Version struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	} `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// message is one decoded QMP message: exactly one of greeting, answer (return or error)
// and event.
type message struct {
	greeting *Greeting
	isAnswer bool
	ret      json.RawMessage
	err      *QMPError
	id       json.RawMessage // the command's id echoed back; nil when absent
	event    *Event
}

// decodeMessage decodes one QMP message. It is fed whatever the socket carries, so it
// checks the shape strictly and never panics.
func decodeMessage(line []byte) (message, error) {
	var raw struct {
		QMP       *Greeting       `json:"QMP"`
		Return    json.RawMessage `json:"return"`
		Error     *QMPError       `json:"error"`
		Event     *string         `json:"event"`
		Data      json.RawMessage `json:"data"`
		Timestamp *struct {
			Seconds      int64 `json:"seconds"`
			Microseconds int64 `json:"microseconds"`
		} `json:"timestamp"`
		ID json.RawMessage `json:"id"`
	}
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return message{}, fmt.Errorf("QMP message is not a JSON object: %.80q", line)
	}
	if err := json.Unmarshal(line, &raw); err != nil {
		return message{}, fmt.Errorf("QMP message is not valid JSON: %w", err)
	}
	kinds := 0
	var m message
	if raw.QMP != nil {
		kinds++
		m.greeting = raw.QMP
	}
	if raw.Return != nil {
		kinds++
		m.isAnswer, m.ret = true, raw.Return
	}
	if raw.Error != nil {
		kinds++
		m.isAnswer, m.err = true, raw.Error
		if m.err.Class == "" && m.err.Desc == "" {
			return message{}, errors.New("QMP error message has neither class nor description")
		}
	}
	if raw.Event != nil {
		kinds++
		ev := &Event{Name: *raw.Event, Data: raw.Data}
		if ev.Name == "" {
			return message{}, errors.New("QMP event has no name")
		}
		if ts := raw.Timestamp; ts != nil && ts.Seconds >= 0 && ts.Microseconds >= 0 && ts.Microseconds < 1e6 {
			ev.Time = time.Unix(ts.Seconds, ts.Microseconds*1000)
		}
		m.event = ev
	}
	if kinds != 1 {
		return message{}, fmt.Errorf("QMP message is %d kinds of message at once (want one of greeting, return, error, event): %.80q", kinds, line)
	}
	if m.isAnswer && raw.ID != nil {
		m.id = raw.ID
	}
	return m, nil
}

// QMPClient is a connection to a QEMU monitor. Commands are sent one at a time; it is
// safe for concurrent use. QEMU serves one QMP client per socket at a time: a second
// client waits until the first disconnects, so keep connections short.
type QMPClient struct {
	conn     net.Conn
	greeting Greeting

	mu     sync.Mutex // serializes commands
	nextID uint64

	pendingMu sync.Mutex
	pending   map[string]chan message // command id → where its answer goes

	events  chan Event
	done    chan struct{} // closed when the reader stops
	readErr error         // why the reader stopped; read after done is closed
}

// DialQMP connects to a QMP socket, reads QEMU's greeting and negotiates capabilities.
func DialQMP(ctx context.Context, socket string) (*QMPClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to the QEMU monitor at %s (is the VM running?): %w", socket, err)
	}
	c, err := newQMPClient(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("QEMU monitor at %s: %w", socket, err)
	}
	return c, nil
}

// newQMPClient reads the greeting on conn and negotiates capabilities; conn is closed
// if that fails.
func newQMPClient(ctx context.Context, conn net.Conn) (*QMPClient, error) {
	c := &QMPClient{
		conn:    conn,
		pending: make(map[string]chan message),
		events:  make(chan Event, 128),
		done:    make(chan struct{}),
	}
	greeting := make(chan *Greeting, 1)
	go c.read(greeting)
	select {
	case g := <-greeting:
		c.greeting = *g
	case <-c.done:
		conn.Close()
		return nil, fmt.Errorf("no greeting: %w", c.readErr)
	case <-ctx.Done():
		conn.Close()
		<-c.done
		return nil, fmt.Errorf("no greeting (another client may hold the monitor): %w", ctx.Err())
	}
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("capabilities negotiation: %w", err)
	}
	return c, nil
}

// read decodes messages until the connection ends: the greeting first, then answers to
// the waiting command, and events to the events channel (dropped when nobody reads
// them and the channel is full).
func (c *QMPClient) read(greeting chan<- *Greeting) {
	defer close(c.done)
	defer close(c.events)
	r := bufio.NewReaderSize(c.conn, 64<<10)
	first := true
	for {
		line, err := readLine(r, maxQMPLine)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("QEMU closed the monitor connection")
			}
			c.readErr = err
			return
		}
		m, err := decodeMessage(line)
		if err != nil {
			c.readErr = err
			c.conn.Close()
			return
		}
		switch {
		case first:
			if m.greeting == nil {
				c.readErr = errors.New("the first QMP message is not QEMU's greeting: is this a QMP socket?")
				c.conn.Close()
				return
			}
			first = false
			greeting <- m.greeting
		case m.event != nil:
			select {
			case c.events <- *m.event:
			default:
			}
		case m.isAnswer:
			c.deliver(m)
		}
	}
}

// deliver hands an answer to the command waiting for it. An answer nobody waits for
// (to a command given up on) is dropped. An answer without an id (QEMU sends one only
// for a request it could not parse) goes to the command in flight.
func (c *QMPClient) deliver(m message) {
	c.pendingMu.Lock()
	defer c.pendingMu.Unlock()
	var ch chan message
	if m.id == nil {
		for _, p := range c.pending {
			ch = p
		}
	} else {
		var id string
		if json.Unmarshal(m.id, &id) != nil {
			return
		}
		ch = c.pending[id]
	}
	if ch == nil {
		return
	}
	select {
	case ch <- m:
	default:
	}
}

// readLine reads one line of at most limit bytes.
func readLine(r *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > limit {
			return nil, fmt.Errorf("QMP message longer than %d bytes", limit)
		}
		line = append(line, chunk...)
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// Greeting is what QEMU said when the client connected.
func (c *QMPClient) Greeting() Greeting { return c.greeting }

// Events delivers asynchronous events until the connection closes. Events nobody reads
// are dropped once 128 are waiting.
func (c *QMPClient) Events() <-chan Event { return c.events }

// Execute runs a command with arguments (nil for none) and decodes its answer into
// result (nil to ignore it). An error answer is a *QMPError.
func (c *QMPClient) Execute(ctx context.Context, command string, args, result any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{command, args, id}
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("QMP %s: encode arguments: %w", command, err)
	}
	answer := make(chan message, 1)
	c.pendingMu.Lock()
	c.pending[id] = answer
	c.pendingMu.Unlock()
	defer func() {
		c.pendingMu.Lock()
		delete(c.pending, id)
		c.pendingMu.Unlock()
	}()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	}
	if _, err := c.conn.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("QMP %s: send: %w", command, err)
	}
	var m message
	select {
	case m = <-answer:
	case <-c.done:
		// The answer may have come just before the connection closed.
		select {
		case m = <-answer:
		default:
			return fmt.Errorf("QMP %s: %w", command, c.readErr)
		}
	case <-ctx.Done():
		return fmt.Errorf("QMP %s: no answer: %w", command, ctx.Err())
	}
	if m.err != nil {
		return fmt.Errorf("QMP %s: %w", command, m.err)
	}
	if result != nil {
		if err := json.Unmarshal(m.ret, result); err != nil {
			return fmt.Errorf("QMP %s: decode the answer: %w", command, err)
		}
	}
	return nil
}

// Close closes the connection.
func (c *QMPClient) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}
