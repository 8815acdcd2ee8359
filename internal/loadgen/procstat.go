package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// processCPU returns this process's user and system CPU time (getrusage).
func processCPU() [2]time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return [2]time.Duration{}
	}
	return [2]time.Duration{time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())}
}

func cpuStats(a, b [2]time.Duration, wall time.Duration) CPUStats {
	u, s := (b[0] - a[0]).Seconds(), (b[1] - a[1]).Seconds()
	st := CPUStats{UserSeconds: round3(u), SystemSeconds: round3(s)}
	if wall > 0 {
		st.Percent = round1((u + s) / wall.Seconds() * 100)
	}
	return st
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Outpost targets.
const clockTicks = 100

// procCPU reads a process's utime+stime from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(b)
}

// parseProcStat extracts utime+stime from the contents of /proc/PID/stat.
func parseProcStat(b []byte) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat: no ')' in %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields after the command", len(f))
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc stat: utime %q stime %q", f[11], f[12])
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// procMem reads VmRSS and VmHWM (bytes) from /proc/PID/status.
func procMem(pid int) (rss, hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc status %s: %q", k, v)
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	return rss, hwm, sc.Err()
}

// brokerSampler follows a broker process's CPU time and RSS.
type brokerSampler struct {
	pid     int
	cpu0    time.Duration
	lastCPU time.Duration
	lastT   int64
	maxRSS  int64
	err     error
}

func newBrokerSampler(pid int, now int64) *brokerSampler {
	b := &brokerSampler{pid: pid, lastT: now}
	b.cpu0, b.err = procCPU(pid)
	b.lastCPU = b.cpu0
	return b
}

// sample records RSS and returns a note for the progress line.
func (b *brokerSampler) sample(now int64) string {
	if b.err != nil {
		return ""
	}
	cpu, err := procCPU(b.pid)
	if err != nil {
		b.err = err
		return ""
	}
	rss, _, err := procMem(b.pid)
	if err != nil {
		b.err = err
		return ""
	}
	b.maxRSS = max(b.maxRSS, rss)
	note := ""
	if now > b.lastT {
		pct := float64(cpu-b.lastCPU) / float64(now-b.lastT) * 100
		note = fmt.Sprintf("  broker %.0f%% %s", pct, mib(rss))
	}
	b.lastCPU, b.lastT = cpu, now
	return note
}

func (b *brokerSampler) final(wall time.Duration) *BrokerStats {
	st := &BrokerStats{PID: b.pid}
	if b.err == nil {
		cpu, err := procCPU(b.pid)
		if err == nil {
			st.RSSBytes, st.PeakRSSBytes, err = procMem(b.pid)
		}
		if err == nil {
			st.CPUSeconds = round3((cpu - b.cpu0).Seconds())
			if wall > 0 {
				st.CPUPercent = round1((cpu - b.cpu0).Seconds() / wall.Seconds() * 100)
			}
			st.MaxRSSBytes = max(b.maxRSS, st.RSSBytes)
		}
		b.err = err
	}
	if b.err != nil {
		st.Error = b.err.Error()
	}
	return st
}

// hostCPU returns the busy and total jiffies of all CPUs from /proc/stat
// (busy = total − idle − iowait); ok is false where /proc is missing.
func hostCPU() (busy, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	return parseHostStat(b)
}

func parseHostStat(b []byte) (busy, total uint64, ok bool) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, false
	}
	var idle uint64
	for i, s := range f[1:] {
		if i >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return total - idle, total, true
}
