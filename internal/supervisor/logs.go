package supervisor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxLine is the longest output line kept whole; longer lines are split.
const maxLine = 16 << 10

// readChunk is the size of the pipe reader behind each output stream.
const readChunk = 1 << 10

// rotatingFile is a log file that rotates by size: name.log is renamed to
// name.log.1 (and .1 to .2, ...) when it would exceed maxSize, keeping
// maxFiles files in all. Safe for concurrent use.
type rotatingFile struct {
	mu       sync.Mutex
	path     string
	maxSize  int64
	maxFiles int
	f        *os.File
	size     int64
}

func openRotating(path string, maxSize int64, maxFiles int) (*rotatingFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	r := &rotatingFile{path: path, maxSize: maxSize, maxFiles: max(maxFiles, 1)}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, st.Size()
	return nil
}

func (r *rotatingFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return 0, os.ErrClosed
	}
	if r.maxSize > 0 && r.size > 0 && r.size+int64(len(p)) > r.maxSize {
		if err := r.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	return n, err
}

func (r *rotatingFile) rotate() error {
	r.f.Close()
	r.f = nil
	if r.maxFiles == 1 {
		if err := os.Truncate(r.path, 0); err != nil {
			return err
		}
		return r.open()
	}
	for i := r.maxFiles - 1; i >= 1; i-- {
		src := r.path
		if i > 1 {
			src = r.path + "." + strconv.Itoa(i-1)
		}
		if err := os.Rename(src, r.path+"."+strconv.Itoa(i)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return r.open()
}

func (r *rotatingFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}

// outputSink receives a component's output lines: it writes each to the
// component's log file ("<RFC3339 time> <stream> <line>") and to slog, and
// keeps the last lines in memory for status reports.
type outputSink struct {
	file *rotatingFile
	log  *slog.Logger
	mu   sync.Mutex
	tail []string // last tailLines lines
}

const tailLines = 20

func (o *outputSink) line(stream string, b []byte) {
	line := string(bytes.ToValidUTF8(b, []byte("\uFFFD")))
	if o.file != nil {
		var buf bytes.Buffer
		buf.Grow(len(line) + 40)
		buf.WriteString(time.Now().UTC().Format("2006-01-02T15:04:05.000Z"))
		buf.WriteByte(' ')
		buf.WriteString(stream)
		buf.WriteByte(' ')
		buf.WriteString(line)
		buf.WriteByte('\n')
		_, _ = o.file.Write(buf.Bytes())
	}
	o.log.Info(line, "stream", stream)
	o.mu.Lock()
	if len(o.tail) >= tailLines {
		copy(o.tail, o.tail[1:])
		o.tail = o.tail[:tailLines-1]
	}
	o.tail = append(o.tail, stream+": "+line)
	o.mu.Unlock()
}

func (o *outputSink) lastLines() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.tail, "\n")
}

func (o *outputSink) resetTail() {
	o.mu.Lock()
	o.tail = nil
	o.mu.Unlock()
}

// capture starts a pipe whose read end is scanned line by line into the
// sink. It returns the write end (for the child) and a channel closed when
// every writer has closed it.
func (o *outputSink) capture(stream string) (*os.File, <-chan struct{}, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer r.Close()
		// A small reader: most output lines are short, and one buffer per
		// stream per component adds up (100 components: 200 buffers). A
		// longer line is gathered in long, allocated only when needed and
		// dropped once it grew past the small size.
		br := bufio.NewReaderSize(r, readChunk)
		var long []byte
		for {
			b, err := br.ReadSlice('\n')
			if errors.Is(err, bufio.ErrBufferFull) {
				long = append(long, b...)
				if len(long) >= maxLine {
					o.line(stream, long[:maxLine]) // a long line: emitted in maxLine pieces
					long = append(long[:0], long[maxLine:]...)
				}
				continue
			}
			if len(long) > 0 { // the end of a line longer than the reader
				b = append(long, b...)
			}
			if len(b) > 0 {
				o.line(stream, bytes.TrimRight(b, "\r\n"))
			}
			if cap(long) > 2*readChunk {
				long = nil
			} else {
				long = long[:0]
			}
			if err != nil {
				return
			}
		}
	}()
	return w, done, nil
}

// tailFile returns the last n lines of a component's log (reading rotated
// files too when the current one is short).
func tailFile(path string, n int, maxFiles int) ([]string, error) {
	var lines []string
	for i := 0; i < max(maxFiles, 1) && len(lines) < n; i++ {
		p := path
		if i > 0 {
			p = path + "." + strconv.Itoa(i)
		}
		b, err := readTail(p, 4<<20)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				if i == 0 {
					return nil, err
				}
				break
			}
			return nil, err
		}
		ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(ls) == 1 && ls[0] == "" {
			ls = nil
		}
		lines = append(ls, lines...)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, nil
}

func readTail(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		if _, err := f.Seek(st.Size()-limit, io.SeekStart); err != nil {
			return nil, err
		}
		b, err := io.ReadAll(f)
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:] // drop the partial first line
		}
		return b, err
	}
	return io.ReadAll(f)
}

var _ = fmt.Sprintf
