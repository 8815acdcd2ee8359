package loadgen

import (
	"os"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	line := "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10\n"
	d, err := parseProcStat([]byte(line))
	if err != nil || d != 3*time.Second {
		t.Errorf("got %v %v, want 3s", d, err)
	}
	if _, err := parseProcStat([]byte("garbage")); err == nil {
		t.Error("no error for garbage")
	}
}

func TestProcSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	rss, hwm, err := procMem(os.Getpid())
	if err != nil || rss <= 0 || hwm < rss {
		t.Errorf("rss %d hwm %d err %v", rss, hwm, err)
	}
}

func TestParseHostStat(t *testing.T) {
	busy, total, ok := parseHostStat([]byte("cpu  100 5 50 800 20 1 4 0 7 0\ncpu0 1 2 3\n"))
	if !ok || total != 980 || busy != 160 {
		t.Errorf("busy %d total %d ok %v", busy, total, ok)
	}
	if _, _, ok := parseHostStat([]byte("intr 1 2 3")); ok {
		t.Error("parsed a non-cpu line")
	}
}
