package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/fswatch"
	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// debounce is how long the watcher waits after the last change before
// reloading, so an editor's write-rename-chmod sequence is one reload.
const debounce = 200 * time.Millisecond

type watcher struct {
	w *fswatch.Watcher
}

// watch reloads recipes when recipe files in dir are created, written,
// renamed or removed. The directory itself is watched (not the files), so
// editors that replace files by rename are seen.
func (s *Supervisor) watch(dir string) (*watcher, error) {
	dir = filepath.Clean(dir)
	fw, err := fswatch.New(fswatch.Options{
		Debounce: debounce,
		Filter: func(fw *fswatch.Watcher, ev fswatch.Event) bool {
			if ev.AttribOnly() {
				return false
			}
			inSub := filepath.Clean(ev.Dir) != dir
			switch {
			case !inSub && ev.Created() && isDir(ev.Path()):
				// A new component subdirectory.
				if err := fw.Add(ev.Path()); err != nil {
					s.log.Warn("recipe watcher", "err", err)
				}
				return true
			case recipe.IsRecipeFile(ev.Name):
				return true
			case !inSub && ev.Removed():
				// Perhaps a component subdirectory went away.
				return true
			}
			return false
		},
		OnChange: func(_, _ time.Time) {
			s.log.Info("recipes changed; reloading", "dir", dir)
			if err := s.Reload(context.Background()); err != nil {
				s.log.Error("reload recipes", "err", err)
			}
		},
	}, dir)
	if err != nil {
		return nil, err
	}
	// Component subdirectories (DIR/NAME/recipe.yaml) are watched too.
	if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				if err := fw.Add(filepath.Join(dir, e.Name())); err != nil {
					s.log.Warn("recipe watcher", "err", err)
				}
			}
		}
	}
	return &watcher{w: fw}, nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func (w *watcher) close() {
	w.w.Close()
}
