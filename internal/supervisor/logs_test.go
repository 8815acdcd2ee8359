package supervisor

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotatingLog(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.log")
	rf, err := openRotating(p, 100, 3)
	if err != nil {
		t.Fatal(err)
	}
	sink := &outputSink{file: rf, log: slog.New(slog.DiscardHandler)}
	for i := 0; i < 40; i++ {
		sink.line("stdout", []byte(fmt.Sprintf("line %02d", i)))
	}
	rf.Close()
	files, _ := filepath.Glob(p + "*")
	if len(files) != 3 {
		t.Fatalf("files %v, want c.log, c.log.1, c.log.2", files)
	}
	for _, f := range files {
		if st, _ := os.Stat(f); st.Size() > 100 {
			t.Errorf("%s is %d bytes, over max_size", f, st.Size())
		}
	}
	lines, err := tailFile(p, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 5 || !strings.HasSuffix(lines[4], "stdout line 39") || !strings.HasSuffix(lines[0], "stdout line 35") {
		t.Fatalf("tail %q", lines)
	}
	if got := sink.lastLines(); !strings.HasSuffix(got, "stdout: line 39") || strings.Count(got, "\n") != tailLines-1 {
		t.Fatalf("kept tail %q", got)
	}
}

// Long lines are split, not lost; invalid UTF-8 is replaced.
func TestCaptureLongLines(t *testing.T) {
	dir := t.TempDir()
	rf, _ := openRotating(filepath.Join(dir, "c.log"), 0, 1)
	sink := &outputSink{file: rf, log: slog.New(slog.DiscardHandler)}
	w, done, err := sink.capture("stderr")
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", maxLine+10)
	whole := strings.Repeat("y", maxLine-1) // longer than the reader, kept whole
	fmt.Fprintf(w, "%s\n%s\nbad \xff byte\nno newline at end", long, whole)
	w.Close()
	<-done
	rf.Close()
	b, _ := os.ReadFile(filepath.Join(dir, "c.log"))
	if got := strings.Count(string(b), "x"); got != maxLine+10 {
		t.Errorf("%d x kept, want %d", got, maxLine+10)
	}
	if !strings.Contains(string(b), " "+whole+"\n") {
		t.Errorf("a line of %d bytes was split", len(whole))
	}
	if got := strings.Count(string(b), "stderr x"); got != 2 {
		t.Errorf("a line of %d bytes came out as %d lines, want 2", len(long), got)
	}
	if !strings.Contains(string(b), "stderr bad \uFFFD byte\n") || !strings.Contains(string(b), "stderr no newline at end\n") {
		t.Errorf("log:\n%s", b[len(b)-80:])
	}
}
