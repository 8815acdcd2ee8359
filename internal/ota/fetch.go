package ota

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// ErrSlowRetrieval is returned when a download moves fewer bytes than
// timeouts.min_speed over timeouts.speed_window (or stalls): a
// slow-retrieval attack or a dying link. The partial file is kept and the
// next attempt resumes it.
var ErrSlowRetrieval = errors.New("ota: slow retrieval: download below minimum speed")

// ErrEndlessData is returned when the server sends more bytes than the
// signed length of a target: an endless-data attack. The partial file is
// discarded.
var ErrEndlessData = fmt.Errorf("ota: %w", tuf.ErrTooLarge)

// fetcher talks HTTP to the repository.
type fetcher struct {
	base     string // URL without trailing slash
	client   *http.Client
	t        Timeouts
	requests atomic.Int64
	bytes    atomic.Int64
	onBytes  func(n int) // counts target bytes received (metrics)
}

func newFetcher(base string, t Timeouts, roots *x509.CertPool) *fetcher {
	tr := &http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: t.Connect.D(), KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   t.Connect.D(),
		ResponseHeaderTimeout: t.Response.D(),
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true, // lengths in metadata are wire lengths
	}
	return &fetcher{base: strings.TrimRight(base, "/"), client: &http.Client{Transport: tr}, t: t}
}

// metaFetcher adapts fetcher to tuf.Fetcher for URL/metadata/.
type metaFetcher struct{ f *fetcher }

func (m metaFetcher) Fetch(ctx context.Context, path string, maxLen int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, m.f.t.Metadata.D())
	defer cancel()
	resp, err := m.f.get(ctx, "/metadata/"+path, 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusForbidden: // object stores answer 403 for absent keys
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, tuf.ErrNotFound
	default:
		return nil, fmt.Errorf("ota: GET %s: HTTP %s", resp.Request.URL, resp.Status)
	}
	if resp.ContentLength > maxLen {
		return nil, fmt.Errorf("ota: GET %s: %w: Content-Length %d > %d", resp.Request.URL, tuf.ErrTooLarge, resp.ContentLength, maxLen)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLen+1))
	m.f.bytes.Add(int64(len(b)))
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("ota: GET %s: %w (timeouts.metadata %v)", resp.Request.URL, ErrSlowRetrieval, m.f.t.Metadata)
		}
		return nil, fmt.Errorf("ota: GET %s: %w", resp.Request.URL, err)
	}
	if int64(len(b)) > maxLen {
		return nil, fmt.Errorf("ota: GET %s: %w: more than %d bytes", resp.Request.URL, tuf.ErrTooLarge, maxLen)
	}
	return b, nil
}

func (f *fetcher) get(ctx context.Context, path string, from int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("ota: %w", err)
	}
	if from > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(from, 10)+"-")
	}
	f.requests.Add(1)
	resp, err := f.client.Do(req)
	if err != nil {
		if c := context.Cause(ctx); errors.Is(c, ErrSlowRetrieval) {
			return nil, fmt.Errorf("ota: GET %s: %w", req.URL, c)
		}
		return nil, fmt.Errorf("ota: GET %s: %w", req.URL, err)
	}
	return resp, nil
}

// Progress is a download's progress.
type Progress struct {
	Target      string  `json:"target"`
	Done        int64   `json:"bytes"`
	Total       int64   `json:"total"`
	Percent     float64 `json:"percent"`
	BytesPerSec float64 `json:"bytes_per_sec"`
	ETASeconds  float64 `json:"eta_seconds"`
	// Received counts bytes received over the network in this process
	// (resumed bytes already on disk are not counted).
	Received int64 `json:"received"`
}

// download fetches URL/targets/path into dst, resuming from dst's current
// size with an HTTP Range request. It never writes more than length bytes
// (ErrEndlessData) and aborts below the minimum speed (ErrSlowRetrieval).
// progress is called as bytes arrive (at most a few times a second).
func (f *fetcher) download(ctx context.Context, path, dst string, length int64, progress func(Progress)) error {
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	defer out.Close()
	st, err := out.Stat()
	if err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	off := st.Size()
	if off > length {
		off = 0
	}
	if off == length {
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := f.get(ctx, "/targets/"+path, off)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, ok := contentRangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != off {
			return fmt.Errorf("ota: GET %s: bad Content-Range %q for offset %d", resp.Request.URL, resp.Header.Get("Content-Range"), off)
		}
	case http.StatusOK:
		off = 0 // server ignored Range: start over
	case http.StatusRequestedRangeNotSatisfiable:
		off = 0
		if err := out.Truncate(0); err != nil {
			return fmt.Errorf("ota: %w", err)
		}
		return fmt.Errorf("ota: GET %s: range %d- not satisfiable; restarting", resp.Request.URL, st.Size())
	default:
		return fmt.Errorf("ota: GET %s: HTTP %s", resp.Request.URL, resp.Status)
	}
	if resp.ContentLength > length-off {
		os.Remove(dst)
		return fmt.Errorf("%w: GET %s: Content-Length %d, signed length leaves %d", ErrEndlessData, resp.Request.URL, resp.ContentLength, length-off)
	}
	// A complete response shorter than the signed length is another file
	// (a wrong or altered target): take it whole, bounded by the signed
	// length, and let the hash check name it.
	short := resp.StatusCode == http.StatusOK && resp.ContentLength >= 0 && resp.ContentLength < length
	if short {
		length = resp.ContentLength
	}
	if err := out.Truncate(off); err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	if _, err := out.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("ota: %w", err)
	}

	// Slow-retrieval watchdog: each window must move window*min_speed
	// bytes.
	var moved atomic.Int64
	window := f.t.SpeedWindow.D()
	need := int64(float64(f.t.MinSpeed) * window.Seconds())
	go func() {
		tk := time.NewTicker(window)
		defer tk.Stop()
		var last int64
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				m := moved.Load()
				if m-last < need {
					cancel(fmt.Errorf("%w: %d bytes in %v, need %d", ErrSlowRetrieval, m-last, window, need))
					return
				}
				last = m
			}
		}
	}()

	t0 := time.Now()
	done := off
	var lastReport time.Time
	buf := make([]byte, 64<<10)
	for done < length {
		n, rerr := resp.Body.Read(buf[:min(int64(len(buf)), length-done)])
		if n > 0 {
			if _, err := out.Write(buf[:n]); err != nil {
				return fmt.Errorf("ota: write %s: %w", dst, err)
			}
			done += int64(n)
			moved.Add(int64(n))
			f.bytes.Add(int64(n))
			if f.onBytes != nil {
				f.onBytes(n)
			}
			if progress != nil && (time.Since(lastReport) > 250*time.Millisecond || done == length) {
				lastReport = time.Now()
				progress(makeProgress(path, done, length, moved.Load(), time.Since(t0)))
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if c := context.Cause(ctx); errors.Is(c, ErrSlowRetrieval) {
				return fmt.Errorf("ota: GET %s at byte %d: %w", resp.Request.URL, done, c)
			}
			return fmt.Errorf("ota: GET %s at byte %d: %w", resp.Request.URL, done, rerr)
		}
	}
	if done < length {
		return fmt.Errorf("ota: GET %s: %w at byte %d of %d", resp.Request.URL, io.ErrUnexpectedEOF, done, length)
	}
	// Endless data: anything past the signed length is an attack.
	var one [1]byte
	if n, _ := io.ReadFull(resp.Body, one[:]); n > 0 {
		out.Close()
		os.Remove(dst)
		return fmt.Errorf("%w: GET %s: server sent more than the signed length %d", ErrEndlessData, resp.Request.URL, length)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("ota: fsync %s: %w", dst, err)
	}
	return nil
}

func makeProgress(target string, done, total, received int64, took time.Duration) Progress {
	p := Progress{Target: target, Done: done, Total: total, Received: received}
	if total > 0 {
		p.Percent = 100 * float64(done) / float64(total)
	}
	if s := took.Seconds(); s > 0 {
		p.BytesPerSec = float64(received) / s
	}
	if p.BytesPerSec > 0 {
		p.ETASeconds = float64(total-done) / p.BytesPerSec
	}
	return p
}

// contentRangeStart parses "bytes START-END/TOTAL".
func contentRangeStart(h string) (int64, bool) {
	h, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	i := strings.IndexByte(h, '-')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(h[:i], 10, 64)
	return n, err == nil
}
