package isolation_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// rawClient speaks the wire protocol by hand, so that cases can send what
// no driver would: pipelined startup bytes, FunctionCall, odd startup
// parameters. Not safe for concurrent use.
type rawClient struct {
	conn net.Conn
	fe   *pgproto3.Frontend
	// key is the BackendKeyData the server sent.
	pid    uint32
	secret []byte
}

func dialRaw(ctx context.Context, addr string) (*rawClient, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.SetDeadline(deadline)
	return &rawClient{conn: c, fe: pgproto3.NewFrontend(c, c)}, nil
}

func (r *rawClient) Close() error { return r.conn.Close() }

// write encodes msgs and sends them in one write.
func (r *rawClient) write(msgs ...pgproto3.FrontendMessage) error {
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			return fmt.Errorf("encode %T: %w", m, err)
		}
	}
	_, err := r.conn.Write(buf)
	return err
}

// startup sends a StartupMessage followed, in the same write, by extra.
func (r *rawClient) startup(params map[string]string, extra ...pgproto3.FrontendMessage) error {
	msgs := append([]pgproto3.FrontendMessage{&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params}}, extra...)
	return r.write(msgs...)
}

// serverError is an ErrorResponse the server sent.
type serverError struct{ *pgconn.PgError }

func (e *serverError) Error() string { return "server: " + e.PgError.Error() }
func (e *serverError) Unwrap() error { return e.PgError }

func errorOf(m *pgproto3.ErrorResponse) error {
	return &serverError{pgconn.ErrorResponseToPgError(m)}
}

// scramAuth answers the server's SCRAM-SHA-256 exchange; pipeline is sent
// in the same write as the final SASL response (before the server has
// said whether authentication succeeded). It returns after
// AuthenticationOk.
func (r *rawClient) scramAuth(password string, pipeline ...pgproto3.FrontendMessage) error {
	msg, err := r.fe.Receive()
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case *pgproto3.AuthenticationSASL:
		if !slices.Contains(m.AuthMechanisms, "SCRAM-SHA-256") {
			return fmt.Errorf("server offers %v, not SCRAM-SHA-256", m.AuthMechanisms)
		}
	case *pgproto3.ErrorResponse:
		return errorOf(m)
	default:
		return fmt.Errorf("expected AuthenticationSASL, got %T", msg)
	}
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return err
	}
	conv := client.NewConversation()
	first, err := conv.Step("")
	if err != nil {
		return err
	}
	if err := r.write(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(first)}); err != nil {
		return err
	}
	msg, err = r.fe.Receive()
	if err != nil {
		return err
	}
	var serverFirst string
	switch m := msg.(type) {
	case *pgproto3.AuthenticationSASLContinue:
		serverFirst = string(m.Data)
	case *pgproto3.ErrorResponse:
		return errorOf(m)
	default:
		return fmt.Errorf("expected AuthenticationSASLContinue, got %T", msg)
	}
	final, err := conv.Step(serverFirst)
	if err != nil {
		return err
	}
	msgs := append([]pgproto3.FrontendMessage{&pgproto3.SASLResponse{Data: []byte(final)}}, pipeline...)
	if err := r.write(msgs...); err != nil {
		return err
	}
	for {
		msg, err = r.fe.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationSASLFinal:
			if _, err := conv.Step(string(m.Data)); err != nil {
				return fmt.Errorf("server signature: %w", err)
			}
		case *pgproto3.AuthenticationOk:
			return nil
		case *pgproto3.ErrorResponse:
			return errorOf(m)
		default:
			return fmt.Errorf("unexpected %T during authentication", msg)
		}
	}
}

// untilReady reads the rest of the startup phase up to ReadyForQuery,
// keeping the BackendKeyData.
func (r *rawClient) untilReady() error {
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.BackendKeyData:
			r.pid = m.ProcessID
			r.secret = append([]byte(nil), m.SecretKey...)
		case *pgproto3.ReadyForQuery:
			return nil
		case *pgproto3.ErrorResponse:
			return errorOf(m)
		}
	}
}

// login runs the whole startup phase with SCRAM.
func (r *rawClient) login(params map[string]string, password string) error {
	if err := r.startup(params); err != nil {
		return err
	}
	if err := r.scramAuth(password); err != nil {
		return err
	}
	return r.untilReady()
}

// result is what one simple query (or FunctionCall) returned.
type result struct {
	rows []string // first column of every DataRow, as text
	err  error    // an ErrorResponse, as *serverError
}

// readResults reads messages up to the next ReadyForQuery.
func (r *rawClient) readResults() (result, error) {
	var res result
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			return res, err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			var row []byte
			for i, v := range m.Values {
				if i > 0 {
					row = append(row, '\t')
				}
				row = append(row, v...)
			}
			res.rows = append(res.rows, string(row))
		case *pgproto3.FunctionCallResponse:
			res.rows = append(res.rows, string(m.Result))
		case *pgproto3.ErrorResponse:
			res.err = errorOf(m)
		case *pgproto3.ReadyForQuery:
			return res, nil
		}
	}
}

// query runs sql with the simple protocol.
func (r *rawClient) query(sql string) (result, error) {
	if err := r.write(&pgproto3.Query{String: sql}); err != nil {
		return result{}, err
	}
	return r.readResults()
}

// functionCall sends the legacy FunctionCall message with text arguments.
func (r *rawClient) functionCall(oid uint32, args ...string) (result, error) {
	fc := &pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{0}, ResultFormatCode: 0}
	for _, a := range args {
		fc.Arguments = append(fc.Arguments, []byte(a))
	}
	if err := r.write(fc); err != nil {
		return result{}, err
	}
	return r.readResults()
}

// readToClose reads until the server closes the connection and returns
// what it sent: any ErrorResponse and whether it ever said ReadyForQuery.
func (r *rawClient) readToClose() (errs []error, ready bool) {
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			return errs, ready
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			errs = append(errs, errorOf(m))
		case *pgproto3.ReadyForQuery:
			ready = true
		}
	}
}

// sendCancel sends one CancelRequest to addr and waits for the server to
// close the connection.
func sendCancel(ctx context.Context, addr string, pid uint32, key []byte) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: key}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, c)
	return nil
}
