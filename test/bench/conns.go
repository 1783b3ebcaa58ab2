package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// socketInodes returns the inodes of the sockets process pid holds open.
func socketInodes(pid int) (map[uint64]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]bool, len(ents))
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(l, "socket:[") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"), 10, 64)
		if err == nil {
			out[n] = true
		}
	}
	return out, nil
}

// ownPortsTo returns the local ports of this process's TCP connections to
// remotePort on 127.0.0.1, asking each socket for its addresses: much
// cheaper than a kernel-wide socket dump, so that sampling adds next to
// nothing to the in-process proxy's measured CPU time.
func ownPortsTo(remotePort int) (map[int]bool, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	out := map[int]bool{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		peer, err := syscall.Getpeername(fd)
		if err != nil {
			continue // not a connected socket, or closed meanwhile
		}
		p4, ok := peer.(*syscall.SockaddrInet4)
		if !ok || p4.Port != remotePort || p4.Addr != [4]byte{127, 0, 0, 1} {
			continue
		}
		if local, err := syscall.Getsockname(fd); err == nil {
			if l4, ok := local.(*syscall.SockaddrInet4); ok {
				out[l4.Port] = true
			}
		}
	}
	return out, nil
}

// localPortsTo returns the local ports of the established IPv4 TCP
// connections to remotePort whose socket inode is in inodes. It asks the
// kernel through a sock_diag netlink dump of established sockets only: far
// cheaper than reading /proc/net/tcp, which lists every TIME-WAIT socket a
// connection-per-transaction run leaves behind.
func localPortsTo(inodes map[uint64]bool, remotePort int) (map[int]bool, error) {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, netlinkInetDiag)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer syscall.Close(fd)
	// nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes).
	req := make([]byte, 16+56)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1)
	req[16] = syscall.AF_INET
	req[17] = syscall.IPPROTO_TCP
	binary.NativeEndian.PutUint32(req[20:], 1<<tcpEstablished)
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	out := map[int]bool{}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case syscall.NLMSG_DONE:
				return out, nil
			case syscall.NLMSG_ERROR:
				return nil, errors.New("sock_diag: error reply")
			}
			// inet_diag_msg: family, state, timer, retrans, then the
			// socket id (sport and dport big-endian at 4 and 6), ...,
			// inode at 68.
			d := m.Data
			if len(d) < 72 {
				continue
			}
			sport := int(binary.BigEndian.Uint16(d[4:]))
			dport := int(binary.BigEndian.Uint16(d[6:]))
			ino := uint64(binary.NativeEndian.Uint32(d[68:]))
			if dport == remotePort && inodes[ino] {
				out[sport] = true
			}
		}
	}
}

// Linux constants for the sock_diag request.
const (
	netlinkInetDiag  = 4  // NETLINK_INET_DIAG (NETLINK_SOCK_DIAG)
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	tcpEstablished   = 1  // TCP_ESTABLISHED
)

// connSampler counts, while a run lasts, the tenant-role backends that one
// process (the proxy or PgBouncer) holds open: the intersection of that
// process's TCP connections to PostgreSQL with pg_stat_activity's client
// ports of the role.
type connSampler struct {
	done chan struct{}
	wg   sync.WaitGroup
	max  int
	err  error
}

// startConnSampler samples every interval until stop. conn is used only by
// the sampler until stop returns; stop never interrupts a query, so conn
// stays usable.
func startConnSampler(ctx context.Context, conn *pgx.Conn, pid, pgPort int, role, db string, interval time.Duration) *connSampler {
	s := &connSampler{done: make(chan struct{}), max: -1}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			n, err := countServerConns(ctx, conn, pid, pgPort, role, db)
			if err != nil {
				if ctx.Err() == nil {
					s.err = err
				}
				return
			}
			if n > s.max {
				s.max = n
			}
			select {
			case <-ctx.Done():
				return
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the largest count seen (-1 if none).
func (s *connSampler) stop() (int, error) {
	close(s.done)
	s.wg.Wait()
	return s.max, s.err
}

func countServerConns(ctx context.Context, conn *pgx.Conn, pid, pgPort int, role, db string) (n int, err error) {
	var local map[int]bool
	if pid == os.Getpid() {
		local, err = ownPortsTo(pgPort)
	} else {
		var inodes map[uint64]bool
		if inodes, err = socketInodes(pid); err == nil {
			local, err = localPortsTo(inodes, pgPort)
		}
	}
	if err != nil {
		return 0, err
	}
	rows, err := conn.Query(ctx, `SELECT client_port FROM pg_catalog.pg_stat_activity
		WHERE usename = $1 AND datname = $2 AND client_port IS NOT NULL`, role, db)
	if err != nil {
		return 0, err
	}
	ports, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0, err
	}
	for _, p := range ports {
		if local[int(p)] {
			n++
		}
	}
	return n, nil
}
