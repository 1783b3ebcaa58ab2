package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// localPortsTo returns the local ports of the established TCP connections
// to remotePort whose socket inode is in inodes.
func localPortsTo(inodes map[uint64]bool, remotePort int) (map[int]bool, error) {
	out := map[int]bool{}
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			// sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
			if len(fl) < 10 || fl[3] != "01" {
				continue
			}
			if port(fl[2]) != remotePort {
				continue
			}
			ino, err := strconv.ParseUint(fl[9], 10, 64)
			if err != nil || !inodes[ino] {
				continue
			}
			out[port(fl[1])] = true
		}
		f.Close()
	}
	return out, nil
}

// port reads the port of a /proc/net/tcp address ("0100007F:1538").
func port(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return -1
	}
	p, err := strconv.ParseInt(addr[i+1:], 16, 32)
	if err != nil {
		return -1
	}
	return int(p)
}

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

func countServerConns(ctx context.Context, conn *pgx.Conn, pid, pgPort int, role, db string) (int, error) {
	inodes, err := socketInodes(pid)
	if err != nil {
		return 0, err
	}
	local, err := localPortsTo(inodes, pgPort)
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
	n := 0
	for _, p := range ports {
		if local[int(p)] {
			n++
		}
	}
	return n, nil
}
