package supervisor

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// Unpack limits: an archive may not expand beyond these.
const (
	maxUnpackBytes = 4 << 30
	maxUnpackFiles = 100000
)

// fetchArtifact places one artifact into dir: a local file is copied, a URL
// is downloaded; the SHA-256 is verified when given (always for URLs); an
// archive is unpacked when asked; the executable bit is set when asked.
func fetchArtifact(ctx context.Context, client *http.Client, r *recipe.Recipe, a recipe.Artifact, dir string) error {
	var name string
	if a.URL != "" {
		u, _ := url.Parse(a.URL)
		name = path.Base(u.Path)
	} else {
		name = filepath.Base(a.Path)
	}
	if name == "" || name == "." || name == "/" {
		name = "artifact"
	}
	tmp, err := os.CreateTemp(dir, ".fetch-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	w := io.MultiWriter(tmp, h)
	if a.URL != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("%w: download %s: %v", recipe.ErrArtifact, a.URL, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%w: download %s: HTTP %s", recipe.ErrArtifact, a.URL, resp.Status)
		}
		if _, err := io.Copy(w, resp.Body); err != nil {
			return fmt.Errorf("%w: download %s: %v", recipe.ErrArtifact, a.URL, err)
		}
	} else {
		src, err := os.Open(r.LocalPath(a))
		if err != nil {
			return fmt.Errorf("%w: %v", recipe.ErrArtifact, err)
		}
		_, err = io.Copy(w, src)
		src.Close()
		if err != nil {
			return fmt.Errorf("%w: copy %s: %v", recipe.ErrArtifact, a.Path, err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); a.SHA256 != "" && got != a.SHA256 {
		return fmt.Errorf("%w: %s has sha256 %s, recipe says %s", recipe.ErrHashMismatch, a.URL+a.Path, got, a.SHA256)
	}
	if a.Unpack {
		kind := recipe.ArchiveKind(name)
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if err := unpack(tmp, kind, dir); err != nil {
			return fmt.Errorf("%w: unpack %s: %v", recipe.ErrArtifact, name, err)
		}
		return nil
	}
	mode := os.FileMode(0o644)
	if a.Executable {
		mode = 0o755
	}
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}

// unpack extracts a zip or tar.gz archive into dir. Entries that would
// land outside dir (absolute paths, "..", links pointing out), device files
// and archives larger than the limits are refused.
func unpack(f *os.File, kind, dir string) error {
	switch kind {
	case "zip":
		st, err := f.Stat()
		if err != nil {
			return err
		}
		zr, err := zip.NewReader(f, st.Size())
		if err != nil {
			return err
		}
		if len(zr.File) > maxUnpackFiles {
			return fmt.Errorf("more than %d entries", maxUnpackFiles)
		}
		var total int64
		for _, zf := range zr.File {
			target, err := safeJoin(dir, zf.Name)
			if err != nil {
				return err
			}
			mode := zf.Mode()
			switch {
			case mode.IsDir():
				if err := os.MkdirAll(target, 0o755); err != nil {
					return err
				}
			case mode&os.ModeSymlink != 0:
				rc, err := zf.Open()
				if err != nil {
					return err
				}
				link, err := io.ReadAll(io.LimitReader(rc, 4096))
				rc.Close()
				if err != nil {
					return err
				}
				if err := safeSymlink(dir, target, string(link)); err != nil {
					return err
				}
			case mode.IsRegular():
				rc, err := zf.Open()
				if err != nil {
					return err
				}
				n, err := writeFile(target, rc, mode.Perm(), maxUnpackBytes-total)
				rc.Close()
				total += n
				if err != nil {
					return err
				}
			default:
				return fmt.Errorf("%s: unsupported file type %s", zf.Name, mode.Type())
			}
		}
		return nil
	case "tar.gz":
		gz, err := gzip.NewReader(f)
		if err != nil {
			return err
		}
		defer gz.Close()
		tr := tar.NewReader(gz)
		var total int64
		for files := 0; ; files++ {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if files >= maxUnpackFiles {
				return fmt.Errorf("more than %d entries", maxUnpackFiles)
			}
			target, err := safeJoin(dir, hdr.Name)
			if err != nil {
				return err
			}
			switch hdr.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(target, 0o755); err != nil {
					return err
				}
			case tar.TypeReg:
				n, err := writeFile(target, tr, os.FileMode(hdr.Mode).Perm(), maxUnpackBytes-total)
				total += n
				if err != nil {
					return err
				}
			case tar.TypeSymlink:
				if err := safeSymlink(dir, target, hdr.Linkname); err != nil {
					return err
				}
			case tar.TypeXGlobalHeader:
			default:
				return fmt.Errorf("%s: unsupported entry type %q", hdr.Name, hdr.Typeflag)
			}
		}
	}
	return fmt.Errorf("unknown archive kind %q", kind)
}

func safeJoin(dir, name string) (string, error) {
	clean := filepath.Clean("/" + strings.ReplaceAll(name, `\`, "/"))
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains("/"+strings.ReplaceAll(name, `\`, "/")+"/", "/../") {
		return "", fmt.Errorf("entry %q escapes the artifacts directory", name)
	}
	return filepath.Join(dir, clean), nil
}

func safeSymlink(dir, target, link string) error {
	if filepath.IsAbs(link) {
		return fmt.Errorf("symlink %s -> %s points outside the artifacts directory", target, link)
	}
	resolved := filepath.Clean(filepath.Join(filepath.Dir(target), link))
	if resolved != dir && !strings.HasPrefix(resolved, dir+string(filepath.Separator)) {
		return fmt.Errorf("symlink %s -> %s points outside the artifacts directory", target, link)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	return os.Symlink(link, target)
}

func writeFile(target string, r io.Reader, perm os.FileMode, budget int64) (int64, error) {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return 0, err
	}
	// Refuse to write through a symlink planted by an earlier entry.
	if st, err := os.Lstat(target); err == nil && st.Mode()&os.ModeSymlink != 0 {
		return 0, fmt.Errorf("%s: would write through a symlink", target)
	}
	out, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, perm|0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, io.LimitReader(r, budget+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > budget {
		err = fmt.Errorf("archive expands beyond %d bytes", int64(maxUnpackBytes))
	}
	return n, err
}
