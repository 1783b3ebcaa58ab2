package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is Linux's USER_HZ, the unit of /proc/<pid>/stat times.
const clockTicks = 100

// selfCPU returns the user+system CPU time of this process (not of its
// children, so pgbench does not count). The in-process proxy's cost is the
// delta over a run; the harness itself only waits for pgbench meanwhile.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// procCPU returns the user+system CPU time of process pid from
// /proc/<pid>/stat (utime and stime, in clock ticks).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(string(b))
}

// parseProcStat reads utime+stime from a /proc/<pid>/stat line. The command
// name in parentheses may hold spaces, so fields are counted after the last
// ')'.
func parseProcStat(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat line")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat line")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad utime/stime in /proc stat line")
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// sysTimes are the machine-wide CPU times of /proc/stat, in seconds summed
// over all CPUs.
type sysTimes struct {
	busy, total, irq float64
}

// readSysTimes reads the first line of /proc/stat.
func readSysTimes() (sysTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return sysTimes{}, err
	}
	line := strings.SplitN(string(b), "\n", 2)[0]
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return sysTimes{}, fmt.Errorf("unexpected /proc/stat line")
	}
	v := make([]float64, 8)
	for i := range v {
		n, err := strconv.ParseInt(f[i+1], 10, 64)
		if err != nil {
			return sysTimes{}, fmt.Errorf("bad /proc/stat line")
		}
		v[i] = float64(n) / clockTicks
	}
	// user nice system idle iowait irq softirq steal
	busy := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
	return sysTimes{busy: busy, total: busy + v[3] + v[4], irq: v[5] + v[6]}, nil
}

// procScan is one pass over /proc: the CPU seconds of the PostgreSQL
// cluster (the postmaster with its reaped children, and its live children)
// and of kernel threads (children of kthreadd: loopback network work,
// kworkers).
type procScan struct {
	cluster, kernel float64
}

func scanProcs(postmaster int) procScan {
	var s procScan
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return s
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		line := string(b)
		i := strings.LastIndexByte(line, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(line[i+1:])
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ticks := func(idx ...int) float64 {
			t := int64(0)
			for _, k := range idx {
				n, _ := strconv.ParseInt(f[k], 10, 64)
				t += n
			}
			return float64(t) / clockTicks
		}
		switch {
		case pid == postmaster:
			s.cluster += ticks(11, 12, 13, 14)
		case ppid == postmaster:
			s.cluster += ticks(11, 12)
		}
		if pid == 2 || ppid == 2 {
			s.kernel += ticks(11, 12)
		}
	}
	return s
}

// childrenCPU returns the CPU time of this process's reaped children
// (pgbench).
func childrenCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// machineMeter measures, over one run, how busy the machine was and how much
// of it went to processes outside the benchmark (other users, steal).
type machineMeter struct {
	postmaster int
	// others returns the CPU seconds of the benchmark's other long-lived
	// processes (PgBouncer).
	others func() float64
	sys0   sysTimes
	scan0  procScan
	self0  float64
	child0 float64
	other0 float64
}

func (m *machineMeter) start() {
	m.scan0 = scanProcs(m.postmaster)
	m.other0 = m.others()
	self, _ := selfCPU()
	m.self0 = self.Seconds()
	m.child0 = childrenCPU()
	m.sys0, _ = readSysTimes()
}

// stop returns the machine's busy share and the foreign share, both in
// percent of all CPUs.
func (m *machineMeter) stop() (busyPct, foreignPct float64) {
	sys1, err := readSysTimes()
	child1 := childrenCPU()
	self, _ := selfCPU()
	// Let the postmaster reap backends that just exited (their CPU moves
	// to its cutime/cstime).
	time.Sleep(200 * time.Millisecond)
	scan1 := scanProcs(m.postmaster)
	other1 := m.others()
	total := sys1.total - m.sys0.total
	if err != nil || total <= 0 {
		return 0, 0
	}
	busy := sys1.busy - m.sys0.busy
	own := (self.Seconds() - m.self0) + (child1 - m.child0) + (scan1.cluster - m.scan0.cluster) + (other1 - m.other0)
	kern := (sys1.irq - m.sys0.irq) + (scan1.kernel - m.scan0.kernel)
	foreign := busy - own - kern
	if foreign < 0 {
		foreign = 0
	}
	return 100 * busy / total, 100 * foreign / total
}
